//! Every kind of bad policy, refused with the right file, line and field;
//! and the good ones accepted, with a digest that ignores form.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::*;

/// Line numbers in the tests below refer to these documents.
const ACME: &str = r#"name = "acme"
vni = 1001
lane = "double"
vips = ["203.0.113.10", "2001:db8:10::10"]
https_ports = [443]
jms_ports = [61616, 61617]
vpc_cidrs = ["10.101.0.0/16", "fd10:101::/64"]
connectors = [
  { vtep = "10.200.1.10", mac = "02:00:0a:c8:01:0a" },
  { vtep = "10.200.1.11", mac = "02:00:0a:c8:01:0b" },
]
cores = [
  { vtep = "10.200.1.20", mac = "02:00:0a:c8:01:14" },
  { vtep = "10.200.1.21", mac = "02:00:0a:c8:01:15" },
]

[[allow]]
cidr = "198.51.100.0/24"
classes = ["https", "jms"]

[[allow]]
cidr = "2001:db8:beef::/48"

[egress]
snat_ipv4 = "203.0.113.200"
snat_ipv6 = "2001:db8:10::200"
allow = ["0.0.0.0/0", "::/0"]
"#;

/// Same private space as ACME: overlapping vpc_cidrs are allowed.
const BETA: &str = r#"name = "beta"
vni = 1002
lane = "single"
vips = ["203.0.113.20"]
vpc_cidrs = ["10.101.0.0/16"]
connectors = [{ vtep = "10.200.2.10", mac = "02:00:0a:c8:02:0a" }]
cores = [{ vtep = "10.200.2.20", mac = "02:00:0a:c8:02:14" }]

[[allow]]
cidr = "198.51.100.0/25"
classes = ["https"]

[egress]
snat_ipv4 = "203.0.113.201"
"#;

const ACME_JSON: &str = r#"{
  "name": "acme",
  "vni": 1001,
  "lane": "double",
  "vips": ["203.0.113.10", "2001:db8:10::10"],
  "vpc_cidrs": ["10.101.0.0/16"],
  "connectors": [
    {"vtep": "10.200.1.10", "mac": "02:00:0a:c8:01:0a"},
    {"vtep": "10.200.1.11", "mac": "02:00:0a:c8:01:0b"}
  ],
  "cores": [
    {"vtep": "10.200.1.20", "mac": "02:00:0a:c8:01:14"},
    {"vtep": "10.200.1.21", "mac": "02:00:0a:c8:01:15"}
  ],
  "allow": [{"cidr": "198.51.100.0/24"}],
  "egress": {"snat_ipv4": "203.0.113.200"}
}"#;

/// ACME_JSON's content, written differently: key order, defaults spelled
/// out, comments, inline tables.
const ACME_SAME_AS_JSON: &str = r#"# the same tenant as ACME_JSON
lane = "double"
vni = 1001
name = "acme"
https_ports = [443]      # the default
jms_ports = [61616]      # the default
vpc_cidrs = ["10.101.0.0/16"]
vips = [
    "203.0.113.10",
    "2001:db8:10::10",
]
cores = [{ mac = "02:00:0a:c8:01:14", vtep = "10.200.1.20" }, { mac = "02:00:0a:c8:01:15", vtep = "10.200.1.21" }]
connectors = [{ mac = "02:00:0a:c8:01:0a", vtep = "10.200.1.10" }, { mac = "02:00:0a:c8:01:0b", vtep = "10.200.1.11" }]
egress = { allow = ["0.0.0.0/0", "::/0"], snat_ipv4 = "203.0.113.200" }

[[allow]]
classes = ["https", "jms"]
cidr = "198.51.100.0/24"
"#;

fn edit(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "{from:?} is not in the document");
    base.replacen(from, to, 1)
}

fn toml_errors(file: &str, text: &str) -> Vec<PolicyError> {
    parse_toml(Path::new(file), text)
        .expect_err("the document should be refused")
        .0
}

fn json_errors(file: &str, text: &str) -> Vec<PolicyError> {
    parse_json(Path::new(file), text)
        .expect_err("the document should be refused")
        .0
}

fn one(errors: Vec<PolicyError>) -> PolicyError {
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got:\n{}",
        PolicyErrors(errors.clone())
    );
    errors.into_iter().next().unwrap()
}

#[track_caller]
fn assert_at(e: &PolicyError, file: &str, line: usize, field: &str) {
    assert_eq!(
        (e.file.to_str().unwrap(), e.line, e.field.as_str()),
        (file, line, field),
        "error was: {e}"
    );
}

/// One bad thing in ACME, found at `line` in `field`; returns the error.
#[track_caller]
fn bad_acme(from: &str, to: &str, line: usize, field: &str) -> PolicyError {
    let e = one(toml_errors("acme.toml", &edit(ACME, from, to)));
    assert_at(&e, "acme.toml", line, field);
    e
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "carwash-policy-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir_errors(dir: &TempDir) -> Vec<PolicyError> {
    load_path(&dir.0).expect_err("the set should be refused").0
}

// --- good documents ------------------------------------------------------

#[test]
fn good_documents_parse() {
    let acme = parse_toml(Path::new("acme.toml"), ACME).unwrap();
    assert_eq!(acme.lane, Lane::Double);
    assert_eq!(acme.cores.len(), 2);
    let beta = parse_toml(Path::new("/etc/carwash/policies/beta.toml"), BETA).unwrap();
    assert_eq!(beta.https_ports, vec![443]);
    assert_eq!(beta.jms_ports, vec![61616]);
    let json = parse_json(Path::new("acme.json"), ACME_JSON).unwrap();
    let same = parse_toml(Path::new("acme.toml"), ACME_SAME_AS_JSON).unwrap();
    assert_eq!(json, same);
}

#[test]
fn repo_policies_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let set = load_path(&dir).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = set.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["acme", "beta"]);
    assert_eq!(set.get("acme").unwrap().lane, Lane::Double);

    let files = read_dir_or_file(&dir).unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[0].0.ends_with("acme.toml"));
    assert_eq!(files[1].1.connectors.len(), 1);
}

#[test]
fn mac_roundtrip_and_errors() {
    let m: MacAddr = "02:00:0a:c8:01:0a".parse().unwrap();
    assert_eq!(m.to_string(), "02:00:0a:c8:01:0a");
    assert!("02:00:0a:c8:01".parse::<MacAddr>().is_err());
    assert!("02:00:0a:c8:01:0a:00".parse::<MacAddr>().is_err());
    assert!("zz:00:0a:c8:01:0a".parse::<MacAddr>().is_err());
}

// --- TOML: syntax and types ---------------------------------------------

#[test]
fn toml_syntax_errors() {
    bad_acme(r#"lane = "double""#, "lane = double", 3, "lane");
    bad_acme(
        r#"snat_ipv4 = "203.0.113.200""#,
        "snat_ipv4 = 203.0.113.200",
        25,
        "egress.snat_ipv4",
    );
    bad_acme(r#"{ vtep = "10.200.1.11","#, "{ vtep = 10.200.1.11,", 10, "connectors");
    bad_acme("vni = 1001\n", "vni = 1001\nvni = 1002\n", 3, "vni");
    bad_acme(
        r#"cidr = "2001:db8:beef::/48""#,
        r#"cidr = "2001:db8:beef::/48"#,
        22,
        "allow[1].cidr",
    );
}

#[test]
fn toml_unknown_fields() {
    let e = bad_acme("vni = 1001\n", "vni = 1001\nvnid = 7\n", 3, "vnid");
    assert!(e.message.contains("unknown field `vnid`"), "{e}");
    assert_eq!(e.column, 1);
    bad_acme("snat_ipv4 =", "snat_ip =", 25, "egress.snat_ip");
    bad_acme(
        r#"mac = "02:00:0a:c8:01:0b""#,
        r#"mack = "02:00:0a:c8:01:0b""#,
        10,
        "connectors[1].mack",
    );
    bad_acme(
        "cidr = \"2001:db8:beef::/48\"\n",
        "cidr = \"2001:db8:beef::/48\"\nclass = [\"https\"]\n",
        23,
        "allow[1].class",
    );
}

#[test]
fn toml_wrong_types_and_missing_fields() {
    bad_acme("vni = 1001", r#"vni = "1001""#, 2, "vni");
    bad_acme("vni = 1001", "vni = -1", 2, "vni");
    let e = bad_acme(r#"lane = "double""#, r#"lane = "triple""#, 3, "lane");
    assert!(e.message.contains("triple"), "{e}");
    bad_acme(r#"vips = ["#, r#"vips = "203.0.113.10" # ["#, 4, "vips");

    let e = bad_acme("vni = 1001\n", "", 1, "vni");
    assert!(e.message.contains("missing field `vni`"), "{e}");
    bad_acme("snat_ipv4 = \"203.0.113.200\"\n", "", 24, "egress.snat_ipv4");
    bad_acme(r#", mac = "02:00:0a:c8:01:14""#, "", 13, "cores[0].mac");
}

#[test]
fn toml_bad_addresses() {
    bad_acme("2001:db8:beef::/48", "2001:db8:beef::/129", 22, "allow[1].cidr");
    bad_acme("fd10:101::/64", "fd10:101::/6x", 7, "vpc_cidrs[1]");
    bad_acme(r#""::/0""#, r#""::/z""#, 27, "egress.allow[1]");
    let e = bad_acme("203.0.113.10", "203.0.113.300", 4, "vips[0]");
    assert!(e.message.contains("203.0.113.300"), "{e}");
    assert_eq!(e.column, 9);
    bad_acme("10.200.1.20", "10.200.1", 13, "cores[0].vtep");
    bad_acme("2001:db8:10::200", "203.0.113.202", 26, "egress.snat_ipv6");
}

#[test]
fn toml_bad_macs() {
    let e = bad_acme("02:00:0a:c8:01:0b", "02:00:0a:c8:01", 10, "connectors[1].mac");
    assert!(e.message.contains("fewer than 6 octets"), "{e}");
    bad_acme("02:00:0a:c8:01:0b", "02:00:0a:c8:01:xx", 10, "connectors[1].mac");
    let e = bad_acme("02:00:0a:c8:01:0b", "03:00:0a:c8:01:0b", 10, "connectors[1].mac");
    assert!(e.message.contains("multicast"), "{e}");
    bad_acme("02:00:0a:c8:01:15", "00:00:00:00:00:00", 14, "cores[1].mac");
    bad_acme("02:00:0a:c8:01:15", "ff:ff:ff:ff:ff:ff", 14, "cores[1].mac");
    let e = bad_acme("02:00:0a:c8:01:15", "02:00:0a:c8:01:0a", 14, "cores[1].mac");
    assert!(e.message.contains("connectors[0].mac"), "{e}");
}

// --- per-tenant rules ----------------------------------------------------

#[test]
fn vni_range() {
    let e = bad_acme("vni = 1001", "vni = 0", 2, "vni");
    assert!(e.message.contains("1..=16777215"), "{e}");
    bad_acme("vni = 1001", "vni = 16777216", 2, "vni");
    parse_toml(Path::new("acme.toml"), &edit(ACME, "vni = 1001", "vni = 16777215")).unwrap();
    parse_toml(Path::new("acme.toml"), &edit(ACME, "vni = 1001", "vni = 1")).unwrap();
}

#[test]
fn machine_count_per_lane() {
    // double lane, one connector
    let e = bad_acme(
        "  { vtep = \"10.200.1.11\", mac = \"02:00:0a:c8:01:0b\" },\n",
        "",
        8,
        "connectors",
    );
    assert!(e.message.contains("exactly 2 connectors, found 1"), "{e}");

    // single lane, two of each
    let errors = toml_errors("acme.toml", &edit(ACME, r#""double""#, r#""single""#));
    assert_eq!(errors.len(), 2);
    assert_at(&errors[0], "acme.toml", 8, "connectors");
    assert_at(&errors[1], "acme.toml", 12, "cores");
    assert!(errors[1].message.contains("exactly 1 core, found 2"), "{}", errors[1]);

    // single lane, two cores
    let two_cores = edit(
        BETA,
        r#"mac = "02:00:0a:c8:02:14" }"#,
        r#"mac = "02:00:0a:c8:02:14" }, { vtep = "10.200.2.21", mac = "02:00:0a:c8:02:15" }"#,
    );
    assert_at(&one(toml_errors("beta.toml", &two_cores)), "beta.toml", 7, "cores");

    // double lane, one of each
    let errors = toml_errors("beta.toml", &edit(BETA, r#""single""#, r#""double""#));
    assert_eq!(errors.len(), 2);
    assert_at(&errors[0], "beta.toml", 6, "connectors");
    assert_at(&errors[1], "beta.toml", 7, "cores");

    // no machines at all
    let errors = toml_errors(
        "beta.toml",
        &edit(BETA, r#"[{ vtep = "10.200.2.10", mac = "02:00:0a:c8:02:0a" }]"#, "[]"),
    );
    assert_at(&one(errors), "beta.toml", 6, "connectors");
}

#[test]
fn name_rules() {
    let e = one(toml_errors("beta.toml", ACME));
    assert_at(&e, "beta.toml", 1, "name");
    assert!(e.message.contains("beta.toml must hold name = \"beta\""), "{e}");

    let e = one(toml_errors("Acme.toml", &edit(ACME, r#""acme""#, r#""Acme""#)));
    assert_at(&e, "Acme.toml", 1, "name");
    assert!(e.message.contains("not a valid tenant name"), "{e}");

    // A pushed document is held to the name it was pushed under.
    let e = one(json_errors("beta.json", ACME_JSON));
    assert_at(&e, "beta.json", 2, "name");
}

#[test]
fn ports() {
    let errors = toml_errors("acme.toml", &edit(ACME, "[443]", "[443, 0, 443]"));
    assert_eq!(errors.len(), 2);
    assert_at(&errors[0], "acme.toml", 5, "https_ports[1]");
    assert!(errors[0].message.contains("port 0"));
    assert_at(&errors[1], "acme.toml", 5, "https_ports[2]");
    assert!(errors[1].message.contains("twice"));

    let e = bad_acme("[61616, 61617]", "[61616, 443]", 6, "jms_ports[1]");
    assert!(e.message.contains("both an https and a jms port"), "{e}");

    // jms_ports left at its default [61616]: the error goes where it is written.
    let text = edit(&edit(ACME, "jms_ports = [61616, 61617]\n", ""), "[443]", "[443, 61616]");
    assert_at(&one(toml_errors("acme.toml", &text)), "acme.toml", 5, "https_ports[1]");
}

#[test]
fn vip_rules() {
    let e = bad_acme(r#"vips = ["203.0.113.10", "2001:db8:10::10"]"#, "vips = []", 4, "vips");
    assert!(e.message.contains("at least one VIP"), "{e}");
    let e = bad_acme("203.0.113.10", "10.101.3.4", 4, "vips[0]");
    assert!(e.message.contains("vpc_cidrs"), "{e}");
    bad_acme("2001:db8:10::10", "fd10:101::10", 4, "vips[1]");
    bad_acme("203.0.113.10", "224.0.0.1", 4, "vips[0]");
    let e = bad_acme("2001:db8:10::10", "203.0.113.10", 4, "vips[1]");
    assert!(e.message.contains("listed twice"), "{e}");
}

#[test]
fn networks_with_host_bits() {
    let e = bad_acme("10.101.0.0/16", "10.101.0.5/16", 7, "vpc_cidrs[0]");
    assert!(
        e.message.contains("host bits") && e.message.contains("10.101.0.0/16"),
        "{e}"
    );
    assert_eq!(e.column, 14);
    bad_acme("198.51.100.0/24", "198.51.100.1/24", 18, "allow[0].cidr");
    bad_acme(r#""0.0.0.0/0""#, r#""10.0.0.1/8""#, 27, "egress.allow[0]");
    let e = bad_acme(
        r#"vpc_cidrs = ["10.101.0.0/16", "fd10:101::/64"]"#,
        "vpc_cidrs = []",
        7,
        "vpc_cidrs",
    );
    assert!(e.message.contains("at least one"), "{e}");
}

#[test]
fn allow_classes() {
    bad_acme(r#"classes = ["https", "jms"]"#, "classes = []", 19, "allow[0].classes");
    let e = bad_acme(
        r#"["https", "jms"]"#,
        r#"["https", "https"]"#,
        19,
        "allow[0].classes[1]",
    );
    assert!(e.message.contains("\"https\" is listed twice"), "{e}");
    bad_acme(r#"["https", "jms"]"#, r#"["https", "ftp"]"#, 19, "allow[0].classes[1]");
}

#[test]
fn vtep_rules() {
    for bad in ["127.0.0.1", "0.0.0.0", "255.255.255.255", "239.1.1.1"] {
        bad_acme("10.200.1.20", bad, 13, "cores[0].vtep");
    }
    let e = bad_acme(
        r#"vtep = "10.200.1.20""#,
        r#"vtep = "10.200.1.10""#,
        13,
        "cores[0].vtep",
    );
    assert!(
        e.message.contains("used twice") && e.message.contains("acme.toml:9:5, connectors[0].vtep"),
        "{e}"
    );
}

#[test]
fn egress_rules() {
    let e = bad_acme("203.0.113.200", "203.0.113.10", 25, "egress.snat_ipv4");
    assert!(e.message.contains("this tenant's VIPs"), "{e}");
    bad_acme("2001:db8:10::200", "2001:db8:10::10", 26, "egress.snat_ipv6");
    bad_acme("203.0.113.200", "0.0.0.0", 25, "egress.snat_ipv4");
    let e = bad_acme(r#"allow = ["0.0.0.0/0", "::/0"]"#, "allow = []", 27, "egress.allow");
    assert!(e.message.contains("remove [egress]"), "{e}");
    // Without [egress] there simply is no outbound access.
    let no_egress = &ACME[..ACME.find("[egress]").unwrap()];
    assert_eq!(parse_toml(Path::new("acme.toml"), no_egress).unwrap().egress, None);
}

#[test]
fn all_errors_of_a_document_are_reported_in_line_order() {
    let text = edit(ACME, "vni = 1001", "vni = 0");
    let text = edit(&text, "[443]", "[0]");
    let text = edit(&text, "10.101.0.0/16", "10.101.0.1/16");
    let text = edit(&text, "02:00:0a:c8:01:0b", "01:00:0a:c8:01:0b");
    let errors = toml_errors("acme.toml", &text);
    let at: Vec<_> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        at,
        [
            (2, "vni"),
            (5, "https_ports[0]"),
            (7, "vpc_cidrs[0]"),
            (10, "connectors[1].mac")
        ]
    );
}

// --- JSON ------------------------------------------------------------------

#[test]
fn json_syntax_error() {
    let e = one(json_errors("acme.json", &edit(ACME_JSON, r#""double""#, "double")));
    assert_at(&e, "acme.json", 4, "lane");
    assert_eq!(e.column, 11);
    let e = one(json_errors(
        "acme.json",
        &edit(ACME_JSON, "\"vni\": 1001,", "\"vni\": 1001"),
    ));
    assert_at(&e, "acme.json", 4, "vni");
    let e = one(json_errors("acme.json", &edit(ACME_JSON, "\n}", ",\n}")));
    assert_at(&e, "acme.json", 17, "egress");
}

#[test]
fn json_type_errors() {
    let e = one(json_errors(
        "acme.json",
        &edit(ACME_JSON, r#""vni": 1001,"#, "\"vni\": 1001,\n  \"bogus\": 1,"),
    ));
    assert_at(&e, "acme.json", 4, "bogus");
    let e = one(json_errors(
        "acme.json",
        &edit(ACME_JSON, "198.51.100.0/24", "198.51.100.0/33"),
    ));
    assert_at(&e, "acme.json", 15, "allow[0].cidr");
    let e = one(json_errors(
        "acme.json",
        &edit(ACME_JSON, "02:00:0a:c8:01:0b", "02:00:0a:c8:01"),
    ));
    assert_at(&e, "acme.json", 9, "connectors[1].mac");
    let e = one(json_errors(
        "acme.json",
        &edit(ACME_JSON, "203.0.113.10", "203.0.113.300"),
    ));
    assert_at(&e, "acme.json", 5, "vips[0]");
    assert!(e.message.contains("203.0.113.300"), "{e}");
    let e = one(json_errors("acme.json", &edit(ACME_JSON, "  \"vni\": 1001,\n", "")));
    assert_eq!(e.field, "vni");
    assert!(e.message.contains("missing field"), "{e}");
    let e = one(json_errors(
        "acme.json",
        &edit(ACME_JSON, r#"{"snat_ipv4": "203.0.113.200"}"#, "{}"),
    ));
    assert_at(&e, "acme.json", 16, "egress.snat_ipv4");
}

#[test]
fn json_semantic_errors_have_lines() {
    let e = one(json_errors("acme.json", &edit(ACME_JSON, "1001", "0")));
    assert_at(&e, "acme.json", 3, "vni");
    assert_eq!(e.column, 3);
    let e = one(json_errors(
        "acme.json",
        &edit(ACME_JSON, "02:00:0a:c8:01:15", "01:00:0a:c8:01:15"),
    ));
    assert_at(&e, "acme.json", 13, "cores[1].mac");
    let e = one(json_errors(
        "acme.json",
        &edit(ACME_JSON, "10.101.0.0/16", "10.101.0.9/16"),
    ));
    assert_at(&e, "acme.json", 6, "vpc_cidrs[0]");
}

// --- sets ----------------------------------------------------------------

/// ACME and a BETA edited to conflict with it; the conflict is reported in
/// beta.toml (the second claim) and points at acme.toml.
#[track_caller]
fn conflict(from: &str, to: &str, line: usize, field: &str) -> PolicyError {
    let dir = TempDir::new("conflict");
    dir.write("acme.toml", ACME);
    dir.write("beta.toml", edit(BETA, from, to));
    let e = one(dir_errors(&dir));
    assert_at(&e, &dir.file("beta.toml"), line, field);
    assert!(e.message.contains(&dir.file("acme.toml")), "{e}");
    e
}

#[test]
fn set_wide_conflicts() {
    let e = conflict(
        r#"vips = ["203.0.113.20"]"#,
        r#"vips = ["203.0.113.20", "203.0.113.10"]"#,
        4,
        "vips[1]",
    );
    assert!(
        e.message.contains("tenant \"acme\"") && e.message.contains("acme.toml:4:9, vips[0]"),
        "{e}"
    );
    let e = conflict("vni = 1002", "vni = 1001", 2, "vni");
    assert!(e.message.contains("VNI 1001"), "{e}");
    conflict("10.200.2.20", "10.200.1.21", 7, "cores[0].vtep");
    let e = conflict("203.0.113.201", "203.0.113.200", 14, "egress.snat_ipv4");
    assert!(e.message.contains("already the egress IP"), "{e}");
    let e = conflict("203.0.113.201", "203.0.113.10", 14, "egress.snat_ipv4");
    assert!(e.message.contains("VIPs of tenant \"acme\""), "{e}");
}

#[test]
fn egress_ip_against_a_vip_of_a_later_file() {
    let dir = TempDir::new("egress-vip");
    dir.write("acme.toml", edit(ACME, "203.0.113.200", "203.0.113.20"));
    dir.write("beta.toml", BETA);
    let e = one(dir_errors(&dir));
    assert_at(&e, &dir.file("acme.toml"), 25, "egress.snat_ipv4");
    assert!(e.message.contains(&dir.file("beta.toml")), "{e}");
}

#[test]
fn duplicate_tenant_name() {
    let dir = TempDir::new("dup-name");
    dir.write("acme.json", ACME_JSON);
    dir.write("acme.toml", ACME);
    let errors = dir_errors(&dir);
    let e = errors.iter().find(|e| e.field == "name").expect("a name error");
    assert_at(e, &dir.file("acme.toml"), 1, "name");
    assert!(e.message.contains(&dir.file("acme.json")), "{e}");
    // And everything else acme.toml claims a second time.
    for field in [
        "vni",
        "vips[0]",
        "vips[1]",
        "connectors[0].vtep",
        "cores[1].vtep",
        "egress.snat_ipv4",
    ] {
        assert!(errors.iter().any(|e| e.field == field), "no error for {field}");
    }
}

#[test]
fn every_error_of_every_file_together() {
    let dir = TempDir::new("all");
    dir.write("acme.toml", ACME);
    dir.write("beta.toml", edit(BETA, "vni = 1002", "vni = 1001"));
    dir.write("broken.toml", "name = \"broken\"\nvni = = 3\n");
    dir.write(
        "gamma.json",
        edit(&edit(ACME_JSON, "\"acme\"", "\"gamma\""), "1001", "0"),
    );
    let errors = dir_errors(&dir);
    let at: Vec<_> = errors
        .iter()
        .map(|e| (e.file.file_name().unwrap().to_str().unwrap(), e.line, e.field.as_str()))
        .collect();
    assert!(at.contains(&("beta.toml", 2, "vni")), "{at:?}");
    assert!(at.contains(&("broken.toml", 2, "vni")), "{at:?}");
    assert!(at.contains(&("gamma.json", 3, "vni")), "{at:?}");
    // gamma also reuses acme's VIPs and VTEPs.
    assert!(at.contains(&("gamma.json", 5, "vips[0]")), "{at:?}");
    let files: Vec<_> = at.iter().map(|a| a.0).collect();
    assert!(files.is_sorted(), "{files:?}");
}

#[test]
fn directory_contents() {
    let dir = TempDir::new("contents");
    dir.write("acme.json", ACME_JSON);
    dir.write("beta.toml", BETA);
    dir.write(".beta.toml.swp", "garbage");
    dir.write("README.md", "not a policy");
    std::fs::create_dir(dir.0.join("old.toml")).unwrap();
    let set = load_path(&dir.0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.tenants.len(), 2);

    // One file on its own is a set of one.
    let one = load_path(&dir.0.join("beta.toml")).unwrap();
    assert_eq!(one.tenants[0].name, "beta");
}

#[test]
fn empty_directory_is_an_empty_set() {
    let dir = TempDir::new("empty");
    let set = load_path(&dir.0).unwrap();
    assert!(set.tenants.is_empty());
    assert_eq!(set, PolicySet::default());
    assert!(read_dir_or_file(&dir.0).unwrap().is_empty());
}

#[test]
fn unreadable_files_are_named() {
    let missing = Path::new("/nonexistent/carwash/policies");
    let e = one(load_path(missing).unwrap_err().0);
    assert_eq!((e.file.as_path(), e.line), (missing, 0));
    assert!(
        e.to_string().starts_with("/nonexistent/carwash/policies: cannot read:"),
        "{e}"
    );

    let dir = TempDir::new("unreadable");
    dir.write("acme.toml", ACME);
    dir.write("beta.toml", b"name = \"beta\"\xff\xfe\n");
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.0.join("gone.toml"), dir.0.join("gamma.toml")).unwrap();
    let errors = dir_errors(&dir);
    assert_at(&errors[0], &dir.file("beta.toml"), 0, "");
    assert!(errors[0].message.starts_with("cannot read"), "{}", errors[0]);
    #[cfg(unix)]
    assert_at(&errors[1], &dir.file("gamma.toml"), 0, "");

    let err = read_dir_or_file(&dir.0).unwrap_err();
    assert!(format!("{err:#}").contains("beta.toml: cannot read"), "{err:#}");
}

#[test]
fn overlapping_vpc_space_is_allowed() {
    let dir = TempDir::new("overlap");
    dir.write("acme.toml", ACME);
    dir.write("beta.toml", edit(BETA, "10.101.0.0/16", "10.101.128.0/17"));
    load_path(&dir.0).unwrap_or_else(|e| panic!("{e}"));
}

// --- digest ----------------------------------------------------------------

#[test]
fn digest_ignores_form_and_order() {
    let a = TempDir::new("digest-a");
    a.write("acme.json", ACME_JSON);
    a.write("beta.toml", BETA);
    let b = TempDir::new("digest-b");
    b.write("acme.toml", ACME_SAME_AS_JSON);
    b.write("beta.toml", format!("# reformatted\n{}", BETA.replace(" = ", "=")));
    let set_a = load_path(&a.0).unwrap();
    let set_b = load_path(&b.0).unwrap();
    assert_eq!(set_a.digest(), set_b.digest());
    assert_eq!(set_a.digest().len(), 64);

    // The order documents are handed over in does not matter either.
    let docs = [
        parse_toml_document(Path::new("beta.toml"), BETA).unwrap(),
        parse_json_document(Path::new("acme.json"), ACME_JSON).unwrap(),
    ];
    let forward = validate_set(&docs).unwrap();
    let backward = validate_set(&[docs[1].clone(), docs[0].clone()]).unwrap();
    assert_eq!(forward.digest(), backward.digest());
    assert_eq!(forward.digest(), set_a.digest());
    assert_eq!(forward.tenants[0].name, "acme");

    // Content does.
    let c = TempDir::new("digest-c");
    c.write("acme.json", ACME_JSON);
    c.write("beta.toml", edit(BETA, "vni = 1002", "vni = 1003"));
    assert_ne!(load_path(&c.0).unwrap().digest(), set_a.digest());
}

// --- error formatting --------------------------------------------------------

#[test]
fn error_display() {
    let e = bad_acme("10.101.0.0/16", "10.101.0.5/16", 7, "vpc_cidrs[0]");
    assert_eq!(
        e.to_string(),
        "acme.toml:7:14: vpc_cidrs[0]: 10.101.0.5/16 has host bits set; the network is 10.101.0.0/16"
    );
    let errors = PolicyErrors(vec![
        e.clone(),
        PolicyError::file(Path::new("x.toml"), "cannot read: gone"),
    ]);
    assert_eq!(errors.to_string(), format!("{e}\nx.toml: cannot read: gone"));
    let as_error: &dyn std::error::Error = &errors;
    assert!(as_error.to_string().lines().count() == 2);
}

#[test]
fn a_character_toml_forbids_gets_a_message() {
    // The TOML parser reports a control character in a comment with an
    // empty message; the operator still needs to read what is wrong.
    let text = "#\0 a comment\nname = \"acme\"\n";
    let e = parse_toml_document(Path::new("acme.toml"), text).unwrap_err();
    let first = &e.0[0];
    assert_eq!((first.line, first.column), (1, 2));
    assert!(!first.message.trim().is_empty(), "{first:?}");
    assert!(first.message.contains("character"), "{}", first.message);
}

// --- [health] ----------------------------------------------------------------

#[test]
fn health_defaults_and_spelled_out_defaults_are_the_same_policy() {
    let set = |t: Tenant| PolicySet::new(vec![t]);
    let plain = set(parse_toml(Path::new("acme.toml"), ACME).unwrap());
    assert_eq!(plain.tenants[0].health, Health::default());
    let spelled = format!(
        "{ACME}\n[health]\ninterval = \"1s\"\ntimeout = \"1000ms\"\nrise = 2\nfall = 3\n\
         https_check = \"tls\"\njms_check = \"tcp\"\nfailback = false\n"
    );
    let spelled = set(parse_toml(Path::new("acme.toml"), &spelled).unwrap());
    assert_eq!(spelled.digest(), plain.digest());

    let tuned = format!("{ACME}\n[health]\ninterval = \"500ms\"\ntimeout = \"200ms\"\nfall = 2\nfailback = true\n");
    let tuned = set(parse_toml(Path::new("acme.toml"), &tuned).unwrap());
    let h = tuned.tenants[0].health;
    assert_eq!(
        (h.interval, h.timeout, h.rise, h.fall, h.failback),
        (Millis(500), Millis(200), 2, 2, true)
    );
    assert_ne!(tuned.digest(), plain.digest());
}

#[test]
fn health_bad_values_are_refused_where_written() {
    let line = ACME.lines().count() + 3;
    for (extra, field, says) in [
        (
            "interval = \"0s\"\ntimeout = \"0s\"",
            "health.interval",
            "longer than 0s",
        ),
        ("timeout = \"2s\"", "health.timeout", "longer than the interval"),
        ("rise = 0", "health.rise", "from 1 to 100"),
        ("fall = 1000", "health.fall", "from 1 to 100"),
    ] {
        let doc = format!("{ACME}\n[health]\n{extra}\n");
        let errors = toml_errors("acme.toml", &doc);
        let e = errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error at {field}: {}", PolicyErrors(errors.clone())));
        assert!(e.message.contains(says), "{e}");
        assert!(e.line >= line - 1, "{e} should point into [health]");
    }
    let e = one(toml_errors(
        "acme.toml",
        &format!("{ACME}\n[health]\ninterval = \"1\"\n"),
    ));
    assert!(e.to_string().contains("needs a unit"), "{e}");
    let e = one(toml_errors(
        "acme.toml",
        &format!("{ACME}\n[health]\nhttps_check = \"icmp\"\n"),
    ));
    assert!(e.to_string().contains("icmp"), "{e}");
}
