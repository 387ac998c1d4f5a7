//! A scripted HTTP/1.1 server on a free 127.0.0.1 port, standing in for a service in tests: a
//! webhook receiver, a FHIR server's bad answers, an AWS JSON service the emulator lacks
//! (moto's server has no `StartSyncExecution`). A handler answers each request, and every
//! request is recorded with the status it got. The one such server of the project: the
//! library's unit tests and the functions' tests include this file by `#[path]`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// One request the server received, and the status it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status, headers, body.
pub type Reply = (u16, Vec<(&'static str, String)>, String);

#[derive(Debug)]
pub struct ScriptedHttp {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl ScriptedHttp {
    /// Answers request `n` (from 0) with `handler(n, request)`.
    pub fn serve(mut handler: impl FnMut(usize, &Received) -> Reply + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts.next().unwrap_or("").to_owned();
                let mut headers = Vec::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let mut request = Received {
                    method,
                    path,
                    headers,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    text: String::from_utf8(body).unwrap(),
                    status: 0,
                };
                let (status, extra, text) = handler(n, &request);
                n += 1;
                request.status = status;
                log.lock().unwrap().push(request);
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    text.len()
                );
                for (k, v) in extra {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&text);
                let _ = stream.write_all(out.as_bytes());
            }
        });
        ScriptedHttp { endpoint, received }
    }

    /// An AWS JSON service: each request gets the next status and JSON body, then a 500.
    pub fn start(answers: Vec<(u16, Value)>) -> ScriptedHttp {
        let mut answers = answers.into_iter();
        ScriptedHttp::serve(move |_, _| {
            let (status, answer) = answers
                .next()
                .unwrap_or((500, json!({ "__type": "NoMoreAnswers" })));
            let ct = ("content-type", "application/x-amz-json-1.0".to_owned());
            (status, vec![ct], answer.to_string())
        })
    }

    /// A webhook receiver: the first requests get `statuses`, then 200, with no body.
    pub fn statuses(statuses: Vec<u16>) -> ScriptedHttp {
        let mut statuses = statuses.into_iter();
        ScriptedHttp::serve(move |_, _| (statuses.next().unwrap_or(200), vec![], String::new()))
    }

    /// Every request, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The JSON bodies of the requests answered 200, in order.
    pub fn accepted_bodies(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .map(|r| r.body)
            .collect()
    }
}
