//! The planned path ([`Mapping::apply`]) against the template path
//! ([`Mapping::apply_via_templates`]): the same resources and the same errors (file,
//! expression place and record named alike) on every mapping of the project and on a file
//! of every planned shape, over records of many kinds of values.

use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::Mapping;
use crate::model::{Op, RecordKey, ResourceOp, Sequence, SourceChange};

/// Values a record field takes: missing, empty, codes the mappings know, other kinds.
fn pool() -> Vec<Option<Json>> {
    let mut v: Vec<Option<Json>> = vec![None];
    for j in [
        json!(null),
        json!(""),
        json!("  "),
        json!("x"),
        json!("M"),
        json!("F"),
        json!("S"),
        json!("white"),
        json!("hispanic"),
        json!("nonhispanic"),
        json!("numeric"),
        json!("text"),
        json!("63586-2"),
        json!("2020-01-02"),
        json!("12.5"),
        json!("3"),
        json!("AMB"),
        json!("ambulatory"),
        json!("a b c"),
        json!(0),
        json!(7),
        json!(-2),
        json!(1.5),
        json!(2.0),
        json!(true),
        json!(false),
        json!([]),
        json!(["a"]),
        json!({}),
        json!({"family": "F", "display": "d"}),
    ] {
        v.push(Some(j));
    }
    v
}

/// The record fields a mapping file names (`record.X`).
fn fields(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("record.") {
        rest = &rest[i + "record.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn change(m: &Mapping, key: Json, data: Json) -> SourceChange {
    SourceChange {
        source: m.source().to_owned(),
        entity: m.entity().to_owned(),
        key: RecordKey::from_pairs([("Id", key)]),
        op: Op::Upsert,
        sequence: Sequence::parse("1").unwrap(),
        observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
        data: data.into(),
    }
}

/// Applies `m` both ways to `rounds` records and asserts the same answer; returns how many
/// records mapped and how many failed.
fn compare(m: &Mapping, text: &str, rounds: usize, seed: u64) -> (usize, usize) {
    let names = fields(text);
    let pool = pool();
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let (mut ok, mut failed) = (0, 0);
    for round in 0..rounds {
        let mut data = serde_json::Map::new();
        for n in &names {
            // Mostly plausible strings, so most records get far into the mapping.
            let pick = if next() % 3 == 0 {
                next() % pool.len()
            } else {
                4 + next() % 16
            };
            if let Some(v) = &pool[pick] {
                data.insert(n.clone(), v.clone());
            }
        }
        let key = if round % 17 == 0 {
            json!("")
        } else {
            json!(format!("k-{round}"))
        };
        let c = change(m, key, Json::Object(data));
        let fast = m.apply(&c);
        let slow = m.apply_via_templates(&c);
        assert_eq!(fast, slow, "{}: record {}", m.origin(), c.data);
        match fast {
            Ok(_) => ok += 1,
            Err(o) => {
                failed += 1;
                for issue in &o.issues {
                    assert!(issue.diagnostics.contains(&c.label()), "{issue:?}");
                    assert!(issue.diagnostics.contains(m.origin()), "{issue:?}");
                    assert_eq!(issue.expression.len(), 1, "{issue:?}");
                }
            }
        }
    }
    (ok, failed)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

#[test]
fn every_project_mapping_gives_the_same_answer_both_ways() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    yaml_files(&root.join("examples"), &mut files);
    yaml_files(&root.join("tests/fixtures"), &mut files);
    files.sort();
    let mut checked = 0;
    let (mut planned, mut total) = (0, 0);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Pipeline and other YAML files are not mappings; bad mappings are tested elsewhere.
        let Ok(m) = Mapping::load(&f) else { continue };
        let (ok, failed) = compare(&m, &text, 300, checked as u64 + 1);
        assert!(ok + failed == 300);
        let (p, t) = m.planned();
        planned += p;
        total += t;
        checked += 1;
    }
    assert!(checked >= 15, "{checked} mappings");
    // Most expressions of the project's mappings are planned: this test exercises the plans.
    assert!(planned * 10 >= total * 8, "{planned} of {total} planned");
}

#[test]
fn synthea_patients_is_planned_whole() {
    let m = Mapping::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/synthea/patients.yaml"),
    )
    .unwrap();
    let (planned, total) = m.planned();
    assert_eq!(planned, total);
    assert!(total >= 20, "{total}");
}

/// Every planned shape, with values that take each branch, and some that send a planned
/// expression back to its template at run time (floats printed, `==` across kinds).
const SHAPES: &str = r#"
source: s
entity: e
conceptMaps: [cm.json]
resources:
  - resourceType: Basic
    when: "not (record.a == 'skip') and record.b != 'skip-too'"
    template:
      plain: "{{ record.a }}"
      nested: "{{ record.e.family }}"
      lit: "{{ 'x' }}"
      int: "{{ 8 }}"
      none: "{{ none }}"
      bools: ["{{ true }}", "{{ false }}"]
      req: "{{ record.b | required }}"
      tr: "{{ record.c | translate('t') }}"
      tr_attr: "{{ (record.c | translate('t')).display }}"
      tr_bad: "{{ record.d | translate('nope') if record.d == 'x' }}"
      cm: "{{ conceptmap('urn:cm', record.c) }}"
      cm_code: "{{ conceptmap('urn:cm', record.d | required, 'urn:src').code }}"
      cm_kw: "{{ conceptmap('urn:cm', record.d, system='urn:src') }}"
      coding: "{{ coding('urn:sys', record.a, record.b) }}"
      coding2: "{{ coding(record.c | translate('sys'), record.d) }}"
      ref: "{{ reference('Patient', entity='p', key={'Id': record.a}) }}"
      ref_req: "{{ reference('Patient', entity='p', key={'Id': record.b | required}, suffix='s') }}"
      ref_self: "{{ reference('Basic') }}"
      dict: "{{ {'use': 'maiden', 'family': record.a, 'given': [record.b, 'y']} if record.a }}"
      ifelse: "{{ 'one' if record.c else 'two' }}"
      or: "{{ record.a or record.b or 'none-left' }}"
      and: "{{ record.a and record.c }}"
      eq: "{{ record.c == record.d }}"
      inlist: "{{ record.c in ['M', 'S', 7] }}"
      concat: "{{ 'A:' ~ record.a ~ '/' ~ record.c if record.a }}"
      text: "a={{ record.a }}, c={{ record.c }} "
      text_int: "n {{ 7 }}"
      unplanned: "{{ (record.d | string | upper) }}"
translations:
  t:
    M: { system: "urn:t", code: m, display: Male }
    S: plain
    "7": seven
    "true": yes
    x: null
  sys: { M: "urn:sys-m", S: 5 }
"#;

#[test]
fn every_planned_shape_gives_the_same_answer_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cm.json"),
        json!({"resourceType": "ConceptMap", "url": "urn:cm", "group": [{
            "source": "urn:src", "target": "urn:tgt",
            "element": [
                {"code": "M", "target": [{"code": "male", "display": "Male", "equivalence": "equivalent"}]},
                {"code": "7", "target": [{"code": "seven", "equivalence": "equivalent"}]}
            ]
        }]})
        .to_string(),
    )
    .unwrap();
    let origin = dir.path().join("shapes.yaml");
    let m = Mapping::from_yaml(SHAPES, &origin.display().to_string()).unwrap();
    let (planned, total) = m.planned();
    // All but `unplanned`.
    assert_eq!((planned, total), (29, 30));
    let (_, failed) = compare(&m, SHAPES, 3_000, 7);
    assert!(failed > 100, "{failed} failed");
    // Without the expressions that refuse most values, most records map.
    let lenient: String = SHAPES
        .lines()
        .filter(|l| {
            !(l.starts_with("      ")
                && ["required", "translate(", "conceptmap("]
                    .iter()
                    .any(|w| l.contains(w)))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let m = Mapping::from_yaml(&lenient, &origin.display().to_string()).unwrap();
    let (ok, _) = compare(&m, &lenient, 3_000, 8);
    assert!(ok > 1_000, "{ok} mapped");
}

#[test]
fn errors_name_file_place_and_record_alike() {
    let yaml = "source: s\nentity: e\nresources:\n  - resourceType: Basic\n    template:\n      a: \"{{ record.a | required }}\"\n      b: \"{{ record.b | translate('t') }}\"\n      c: \"{{ reference('Patient', key={'Id': record.c | required}) }}\"\ntranslations:\n  t: { M: male }\n";
    let m = Mapping::from_yaml(yaml, "errors.yaml").unwrap();
    assert_eq!(m.planned(), (3, 3));
    let c = change(&m, json!("k-1"), json!({"b": "Secret-Q"}));
    let fast = m.apply(&c).unwrap_err();
    assert_eq!(Err(fast.clone()), m.apply_via_templates(&c));
    let got: Vec<_> = fast
        .issues
        .iter()
        .map(|i| (i.code.as_str(), i.expression[0].as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("required", "Basic.a"),
            ("code-invalid", "Basic.b"),
            ("required", "Basic.c")
        ]
    );
    assert_eq!(
        fast.issues[1].diagnostics,
        format!(
            "{}: mapping errors.yaml resources[0] Basic.b: code not in translation table `t`",
            c.label()
        )
    );
    assert!(
        !serde_json::to_string(&fast.to_fhir())
            .unwrap()
            .contains("Secret-Q")
    );
}

/// Resource roots (`id` and `resourceType` set on the template's object) and objects and
/// dicts of every size, against the template path: root keys on both sides of `id` and
/// `resourceType`, roots left empty, and a dict that repeats a key.
#[test]
fn object_roots_and_small_maps_give_the_same_answer_both_ways() {
    const ROOTS: &str = r#"source: s
entity: e
resources:
  - resourceType: Basic
    template:
      active: "{{ record.a }}"
      identifier: [{ value: "{{ record.b }}" }]
      code: { text: "{{ record.c }}" }
      subject: "{{ record.d }}"
  - resourceType: Basic
    idSuffix: empty
    template:
      note: "{{ record.a }}"
  - resourceType: Basic
    idSuffix: sizes
    template:
      a: { x: "{{ record.a }}" }
      b: { x: "{{ record.a }}", y: "{{ record.b }}", z: fixed }
      c: { w: "{{ record.a }}", x: "{{ record.b }}", y: "{{ record.c }}", z: "{{ record.d }}" }
      d: "{{ {'k': record.a, 'k': record.b} }}"
      e: "{{ {'p': record.a, 'q': record.b, 'r': record.c, 's': record.d} }}"
      f: "{{ {'q': record.c, 'p': record.d} }}"
      zz: "{{ record.d }}"
"#;
    let m = Mapping::from_yaml(ROOTS, "roots.yaml").unwrap();
    let (ok, failed) = compare(&m, ROOTS, 2_000, 11);
    assert!(ok > 1_500, "{ok} mapped, {failed} failed");
    // `id` and `resourceType` join the root's keys in key order.
    let c = change(&m, json!("k"), json!({"a": "yes", "b": "mine", "c": "t"}));
    let out = m.apply(&c).unwrap();
    assert_eq!(out, m.apply_via_templates(&c).unwrap());
    let ResourceOp::Upsert { resource } = &out[0].op else {
        panic!("{out:?}")
    };
    assert_eq!(
        resource,
        &json!({"resourceType": "Basic", "id": out[0].target.id, "active": "yes",
                "identifier": [{"value": "mine"}], "code": {"text": "t"}})
    );
    let ResourceOp::Upsert { resource } = &out[1].op else {
        panic!("{out:?}")
    };
    assert_eq!(resource["note"], "yes");
    let ResourceOp::Upsert { resource } = &out[2].op else {
        panic!("{out:?}")
    };
    assert_eq!(resource["d"], json!({"k": "mine"}));
    assert_eq!(
        resource["b"],
        json!({"x": "yes", "y": "mine", "z": "fixed"})
    );
    // A root left empty is the bare resource.
    let c = change(&m, json!("k"), json!({}));
    let out = m.apply(&c).unwrap();
    assert_eq!(out, m.apply_via_templates(&c).unwrap());
    let ResourceOp::Upsert { resource } = &out[1].op else {
        panic!("{out:?}")
    };
    assert_eq!(
        resource,
        &json!({"resourceType": "Basic", "id": out[1].target.id})
    );
    assert_eq!(m.apply(&c), m.apply_via_templates(&c));
}
