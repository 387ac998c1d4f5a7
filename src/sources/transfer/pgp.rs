//! OpenPGP-encrypted uploads (partners send PHI encrypted to the pipeline's public key;
//! Transfer Family's managed workflows decrypt the same way), decrypted with the source's
//! secret key by `pgp` (rpgp: pure Rust, MIT/Apache-2.0; Sequoia is LGPL and heavier).
//!
//! The plaintext goes to a temporary file, not memory, and is only read once the whole
//! message has been decrypted: OpenPGP's integrity check (MDC / AEAD tag) comes at the end of
//! the message, and no record of a tampered file may reach the store. A compressed message
//! (OpenPGP's own ZIP/ZLIB) is decompressed on the way.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, Seek, SeekFrom};
use std::path::Path;

use pgp::composed::{Deserializable, Message, SignedSecretKey};
use pgp::types::{KeyDetails, Password};

/// The secret key of a source, with its passphrase.
pub struct DecryptionKey {
    key: SignedSecretKey,
    passphrase: Password,
}

impl fmt::Debug for DecryptionKey {
    // Never the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptionKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl DecryptionKey {
    /// Reads a secret key (ASCII-armored or binary). `passphrase`: the key's, if it has one.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<DecryptionKey, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::from_bytes(&bytes, passphrase).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a secret key (ASCII-armored or binary).
    pub fn from_bytes(bytes: &[u8], passphrase: Option<&str>) -> Result<DecryptionKey, String> {
        let key = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            SignedSecretKey::from_armor_single(bytes).map(|(k, _)| k)
        } else {
            SignedSecretKey::from_bytes(bytes)
        }
        .map_err(|e| format!("not an OpenPGP secret key: {e}"))?;
        Ok(DecryptionKey {
            key,
            passphrase: passphrase.map_or_else(Password::empty, Password::from),
        })
    }

    /// The primary key's id, hex (for logs and messages).
    pub fn key_id(&self) -> String {
        let id = self.key.legacy_key_id();
        id.as_ref().iter().map(|b| format!("{b:02X}")).collect()
    }
}

/// A reader rpgp can take (it wants `Debug`).
struct Input<'a>(&'a mut (dyn BufRead + Send));

impl fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Input")
    }
}

impl io::Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl BufRead for Input<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.0.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.0.consume(amt)
    }
}

/// Why a message could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// Reading the ciphertext failed (the object store, say).
    #[error("{0}")]
    Read(io::Error),
    /// Not a message, not for this key, or failed its integrity check.
    #[error("{0}")]
    Refused(String),
}

/// Decrypts a message (binary or armored) into a new temporary file, rewound to its start.
pub fn decrypt(
    input: &mut (dyn BufRead + Send),
    key: &DecryptionKey,
) -> Result<File, DecryptError> {
    let refused = |what: &str, e: &dyn fmt::Display| DecryptError::Refused(format!("{what}: {e}"));
    let (message, _) =
        Message::from_reader(Input(input)).map_err(|e| refused("not an OpenPGP message", &e))?;
    if !message.is_encrypted() {
        return Err(DecryptError::Refused(
            "the OpenPGP message is not encrypted".into(),
        ));
    }
    let mut message = message.decrypt(&key.passphrase, &key.key).map_err(|e| {
        refused(
            &format!(
                "cannot decrypt with the configured key {} (encrypted to another key?)",
                key.key_id()
            ),
            &e,
        )
    })?;
    while message.is_compressed() {
        message = message
            .decompress()
            .map_err(|e| refused("cannot decompress the decrypted message", &e))?;
    }
    let mut out = tempfile::tempfile().map_err(DecryptError::Read)?;
    io::copy(&mut message, &mut out).map_err(|e| {
        match crate::sources::transfer::reader::object_error(&e) {
            Some(_) => DecryptError::Read(e),
            None => refused(
                "the decrypted message is damaged (integrity check failed?)",
                &e,
            ),
        }
    })?;
    out.seek(SeekFrom::Start(0)).map_err(DecryptError::Read)?;
    Ok(out)
}
