//! Policy documents and API requests, mutated and random, with proptest:
//! parsing and validation never panic or hang and refuse with errors that
//! name the file; a real agent answers every request line on its socket
//! (a clear error for every bad one), keeps serving, and the set in force
//! (digest and generation) moves only when an apply was valid.
//!
//! `CARWASH_PROPTEST_CASES` sets the number of cases of each property
//! (CI default below; `cargo xtask fuzz` runs more).
mod agent_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_common::{AgentSetup, repo_policies_dir};
use carwash_tests::require_root;
use dataplane::api::{Document, Request, Response};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const CI_DOC_CASES: u32 = 3_000;
const CI_API_CASES: u32 = 300;
/// The longest any one parse or validation may take.
const NO_HANG: Duration = Duration::from_secs(2);

fn cases(default: u32, scale: u32) -> u32 {
    std::env::var("CARWASH_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map(|n| n / scale)
        .unwrap_or(default)
}

fn base_documents() -> Vec<(String, String)> {
    let mut docs = Vec::new();
    for name in ["acme.toml", "beta.toml"] {
        let text = std::fs::read_to_string(repo_policies_dir().join(name)).unwrap();
        let tenant = carwash_policy::Tenant::from_toml(&text).unwrap();
        docs.push((name.to_string(), text));
        let stem = name.trim_end_matches(".toml");
        docs.push((format!("{stem}.json"), serde_json::to_string_pretty(&tenant).unwrap()));
    }
    docs
}

/// Fragments that break documents in the ways people and programs do.
const TOKENS: &[&str] = &[
    "\"",
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    "\n",
    "#",
    "'''",
    "\\u0000",
    "\\",
    "-1",
    "0",
    "99999999999999999999",
    "16777216",
    "1e400",
    "null",
    "true",
    "[[allow]]",
    "[egress]",
    "cidr = \"10.0.0.0/33\"",
    "vni = 1",
    "name = \"acme\"",
    "lane = \"triple\"",
    "\"::/0\"",
    "\"0.0.0.0/0\"",
    "é",
    "🚗",
    "\t",
    "\r",
    "vips = []",
    "connectors = []",
    "mac = \"zz:00:00:00:00:00\"",
    "snat_ipv4 = \"203.0.113.10\"",
];

#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    InsertChars { at: usize, chars: Vec<char> },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
    Truncate { at: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Edit::Insert { at, token }),
        (any::<usize>(), prop::collection::vec(any::<char>(), 1..12))
            .prop_map(|(at, chars)| Edit::InsertChars { at, chars }),
        any::<usize>().prop_map(|line| Edit::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines { a, b }),
        any::<usize>().prop_map(|at| Edit::Truncate { at }),
    ]
}

/// A char boundary of `s` from any number.
fn boundary(s: &str, at: usize) -> usize {
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut s = text.to_string();
    for e in edits {
        match e {
            Edit::Delete { at, len } => {
                let a = boundary(&s, *at);
                let b = boundary(&s, (a + len).min(s.len()));
                s.replace_range(a..b.max(a), "");
            }
            Edit::Insert { at, token } => {
                let a = boundary(&s, *at);
                s.insert_str(a, TOKENS[*token]);
            }
            Edit::InsertChars { at, chars } => {
                let a = boundary(&s, *at);
                s.insert_str(a, &chars.iter().collect::<String>());
            }
            Edit::DuplicateLine { line } => {
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let l = lines[line % lines.len()];
                    lines.insert(line % lines.len(), l);
                }
                s = lines.join("\n");
            }
            Edit::SwapLines { a, b } => {
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let n = lines.len();
                    lines.swap(a % n, b % n);
                }
                s = lines.join("\n");
            }
            Edit::Truncate { at } => {
                let a = boundary(&s, *at);
                s.truncate(a);
            }
        }
    }
    s
}

/// A document set: each base document, edited (or not), or random text.
fn document_set() -> impl Strategy<Value = Vec<(String, String)>> {
    let bases = base_documents();
    let n = bases.len();
    prop::collection::vec(
        prop_oneof![
            8 => (0..n, prop::collection::vec(edit(), 0..6)).prop_map(move |(i, edits)| {
                let (name, text) = &bases[i];
                (name.clone(), apply_edits(text, &edits))
            }),
            1 => (prop::collection::vec(any::<char>(), 0..300), any::<bool>())
                .prop_map(|(c, json)| (if json { "x.json" } else { "x.toml" }.to_string(), c.into_iter().collect())),
        ],
        1..4,
    )
}

/// What the agent's apply does before touching the maps: parse every
/// document, validate the set.
fn validate(docs: &[(String, String)]) -> Result<(), carwash_policy::PolicyErrors> {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in docs {
        match carwash_policy::parse_document(Path::new(name), text) {
            Ok(d) => parsed.push(d),
            Err(e) => errors.extend(e.0),
        }
    }
    if !errors.is_empty() {
        return Err(carwash_policy::PolicyErrors(errors));
    }
    carwash_policy::validate_set(&parsed).map(|_| ())
}

#[test]
fn mutated_policy_documents_are_refused_clearly() {
    let mut runner = TestRunner::new(Config {
        cases: cases(CI_DOC_CASES, 1),
        failure_persistence: None,
        ..Config::default()
    });
    let refused = std::cell::Cell::new(0u32);
    let accepted = std::cell::Cell::new(0u32);
    runner
        .run(&document_set(), |docs| {
            let t0 = Instant::now();
            let r = std::panic::catch_unwind(|| validate(&docs));
            prop_assert!(t0.elapsed() < NO_HANG, "validation took {:?}", t0.elapsed());
            let r = r.map_err(|_| TestCaseError::fail(format!("validation panicked on {docs:?}")))?;
            match r {
                Ok(()) => accepted.set(accepted.get() + 1),
                Err(errors) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(!errors.0.is_empty(), "refused without an error");
                    for e in &errors.0 {
                        prop_assert!(!e.message.trim().is_empty(), "an error without a message: {e:?}");
                        prop_assert!(
                            docs.iter().any(|(name, _)| e.file == Path::new(name)),
                            "an error naming no document of the set: {e}"
                        );
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let (refused, accepted) = (refused.get(), accepted.get());
    println!("policy documents: {refused} sets refused, {accepted} accepted");
    assert!(refused > accepted, "the mutations should break most sets");
}

/// A request line: a valid request with its documents edited, a request
/// whose JSON is edited, or random bytes.
fn request_line() -> impl Strategy<Value = String> {
    let docs = document_set();
    prop_oneof![
        4 => (docs, any::<bool>()).prop_map(|(docs, dry_run)| {
            let req = Request::Apply {
                documents: docs.into_iter().map(|(name, content)| Document { name, content }).collect(),
                tenants: vec![],
                dry_run,
            };
            serde_json::to_string(&req).unwrap()
        }),
        2 => (prop::collection::vec(edit(), 1..5), 0..3usize).prop_map(|(edits, which)| {
            let base = [
                r#"{"op":"status"}"#.to_string(),
                r#"{"op":"apply","tenants":[{"name":"zeta","vni":5}],"dry_run":false}"#.to_string(),
                r#"{"op":"apply","documents":[{"name":"a.toml","content":"name = \"a\""}]}"#.to_string(),
            ][which]
                .clone();
            apply_edits(&base, &edits).replace('\n', " ")
        }),
        1 => prop::collection::vec(any::<u8>(), 1..2000).prop_map(|b| {
            String::from_utf8_lossy(&b).replace('\n', " ")
        }),
        1 => (1usize..200_000).prop_map(|n| format!("{{\"op\":\"apply\",\"documents\":[{{\"name\":\"big.toml\",\"content\":\"{}\"}}]}}", "x".repeat(n))),
    ]
    // The agent skips blank lines (no request, no answer).
    .prop_filter("a blank line is no request", |l| !l.trim().is_empty())
}

/// One request line over a fresh connection, one answer line back.
fn raw_call(socket: &Path, line: &str) -> Result<Response, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(line.as_bytes()).map_err(|e| format!("write: {e}"))?;
    s.write_all(b"\n").map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer within 10 s: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("answer {answer:?} is no response: {e}"))
}

#[test]
fn a_real_agent_survives_fuzzed_requests_and_keeps_its_set() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml", "beta.toml"]).unwrap();
    let agent = setup.start().unwrap();
    let first = agent.status();
    let mut runner = TestRunner::new(Config {
        cases: cases(CI_API_CASES, 20),
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let (refused, applied) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner
        .run(&request_line(), |line| {
            let before = agent.status();
            let t0 = Instant::now();
            let resp = raw_call(&setup.socket, &line).map_err(TestCaseError::fail)?;
            prop_assert!(t0.elapsed() < Duration::from_secs(20), "answer took {:?}", t0.elapsed());
            let after = agent.status();
            if resp.ok {
                applied.set(applied.get() + 1);
                let req: Request = serde_json::from_str(&line).expect("the agent accepted it, so it parses");
                if let Request::Apply { documents, dry_run, .. } = &req {
                    let docs: Vec<(String, String)> =
                        documents.iter().map(|d| (d.name.clone(), d.content.clone())).collect();
                    prop_assert!(validate(&docs).is_ok(), "the agent applied a set validation refuses");
                    if *dry_run {
                        prop_assert_eq!(&before.digest, &after.digest);
                    }
                }
            } else {
                refused.set(refused.get() + 1);
                let error = resp.error.clone().unwrap_or_default();
                prop_assert!(!error.trim().is_empty(), "refused without an error: {resp:?}");
                prop_assert_eq!(
                    &before.digest,
                    &after.digest,
                    "a refused request changed the set in force"
                );
                prop_assert_eq!(before.generation, after.generation);
                prop_assert_eq!(&before.tenants, &after.tenants);
            }
            Ok(())
        })
        .unwrap();
    let (refused, applied) = (refused.get(), applied.get());
    println!("API: {refused} requests refused, {applied} answered ok");
    // The agent is still the one that started, and still serves.
    let last = agent.status();
    assert_eq!(last.pid, first.pid);
    assert!(refused > 0);
}
