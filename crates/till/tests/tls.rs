//! The hub over HTTPS with a private CA: a till that trusts the CA (`--ca`)
//! enrols and syncs; a till that trusts only the system roots, or another
//! certificate, is refused with a message that says what to do; plain HTTP
//! to another machine is refused before any connection without `--insecure`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_till");
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Running `till`
// ---------------------------------------------------------------------------

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn base_command() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("TILL_DATA").env_remove("TILL_HUB_DATA").env_remove("TILL_ADMIN_TOKEN");
    c
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn till(args: &[&str]) -> Out {
    let start = Instant::now();
    let mut child = base_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn till");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for till") {
            break s;
        }
        if start.elapsed() > CMD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`till {}` did not finish within {CMD_TIMEOUT:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        elapsed: start.elapsed(),
    }
}

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = till(&a);
    assert_eq!(o.code, 0, "`till {}` failed:\n{}\n{}", a.join(" "), o.stdout, o.stderr);
    serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("`till {}` printed no JSON ({e}):\n{}", a.join(" "), o.stdout))
}

fn fails(args: &[&str]) -> Out {
    let o = till(args);
    assert_ne!(o.code, 0, "`till {}` should fail:\n{}\n{}", args.join(" "), o.stdout, o.stderr);
    o
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

/// A running `till hub serve`, killed on drop.
struct Hub {
    child: Child,
    first_line: String,
    port: u16,
}

impl Hub {
    fn start(data: &Path, extra: &[&str]) -> Hub {
        let mut args = vec!["hub", "serve", "--data", p(data), "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = base_command()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the hub");
        let err = drain(child.stderr.take().expect("stderr"));
        let (tx, rx) = mpsc::channel::<Option<String>>();
        let mut r = BufReader::new(child.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            let mut line = String::new();
            let first = r.read_line(&mut line).ok().filter(|n| *n > 0).map(|_| line.trim().to_string());
            let _ = tx.send(first);
            let mut sink = String::new();
            let _ = r.read_to_string(&mut sink);
        });
        let first_line = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Some(l)) => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the hub printed no address ({other:?}): {}", err.join().unwrap_or_default());
            }
        };
        let url = first_line.split_whitespace().nth(3).unwrap_or_else(|| panic!("no url in {first_line:?}"));
        let port = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        Hub { child, first_line, port }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A private CA: its PEM and its issuer (to sign server certificates).
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("self-signed ca");
    (cert.pem(), Issuer::new(params, key))
}

/// A server certificate for localhost and 127.0.0.1 signed by `ca`:
/// (certificate PEM, private key PEM).
fn server_cert(ca: &Issuer<'static, KeyPair>) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("server params");
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, ca).expect("signed server cert");
    (cert.pem(), key.serialize_pem())
}

struct Pki {
    ca_pem: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_ca: PathBuf,
}

fn write_pki(dir: &Path) -> Pki {
    let (ca_pem, issuer) = new_ca("Tillsync test CA");
    let (cert, key) = server_cert(&issuer);
    // A different, unrelated self-signed certificate for the same names.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("other self-signed");
    let pki = Pki {
        ca_pem: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        other_ca: dir.join("other.pem"),
    };
    // The chain: the server certificate, then its CA.
    std::fs::write(&pki.cert, format!("{cert}{ca_pem}")).expect("write cert");
    std::fs::write(&pki.ca_pem, ca_pem).expect("write ca");
    std::fs::write(&pki.key, key).expect("write key");
    std::fs::write(&pki.other_ca, other.cert.pem()).expect("write other");
    pki
}

struct Tenant {
    hub_dir: PathBuf,
    id: String,
    admin: String,
    store: String,
}

fn sample_tenant(hub_dir: &Path) -> Tenant {
    let t = json(&["hub", "tenant", "create", "Cafe TLS", "--sample", "--data", p(hub_dir)]);
    let id = s(&t["tenant_id"]);
    let st = json(&["hub", "store", "create", "--tenant", &id, "Main", "--data", p(hub_dir)]);
    Tenant { hub_dir: hub_dir.to_path_buf(), id, admin: s(&t["admin_token"]), store: s(&st["store_id"]) }
}

impl Tenant {
    fn code(&self) -> String {
        s(&json(&["hub", "enrol", "--tenant", &self.id, "--store", &self.store, "--data", p(&self.hub_dir)])["code"])
    }
}

fn assert_untrusted(o: &Out, what: &str) {
    eprintln!("{what}: {}", o.stderr.trim());
    let e = o.stderr.to_lowercase();
    assert!(e.contains("certificate"), "{what}: the message names the certificate: {}", o.stderr);
    assert!(o.stderr.contains("--ca"), "{what}: the message says to pass --ca: {}", o.stderr);
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn https_hub_with_a_private_ca() {
    let tmp = TempDir::new().expect("tempdir");
    let pki = write_pki(tmp.path());
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir);
    let hub = Hub::start(&hub_dir, &["--tls-cert", p(&pki.cert), "--tls-key", p(&pki.key)]);
    assert!(hub.first_line.starts_with("hub listening on https://127.0.0.1:"), "{}", hub.first_line);
    let url = format!("https://localhost:{}", hub.port);
    let code = t.code();

    // System roots only: refused, and the message says what to do.
    let no_ca = tmp.path().join("no-ca");
    let o = fails(&["node", "init", "--data", p(&no_ca), "--hub", &url, "--code", &code]);
    assert_untrusted(&o, "without --ca");
    assert!(!no_ca.join("till.db").exists(), "a refused enrolment leaves no till behind");

    // Another self-signed certificate as the CA: refused likewise.
    let wrong = tmp.path().join("wrong-ca");
    let o = fails(&["node", "init", "--data", p(&wrong), "--hub", &url, "--code", &code, "--ca", p(&pki.other_ca)]);
    assert_untrusted(&o, "with another certificate as --ca");
    assert!(!wrong.join("till.db").exists());

    // Admin commands are held to the same rule.
    let o = fails(&["devices", "list", "--hub", &url, "--token", &t.admin]);
    assert_untrusted(&o, "devices list without --ca");

    // With the CA: enrols (the refused attempts never reached the hub, so
    // the code is still unused), bootstraps and syncs.
    let a = tmp.path().join("a");
    let v = json(&["node", "init", "--data", p(&a), "--hub", &url, "--code", &code, "--ca", p(&pki.ca_pem)]);
    assert!(v["products"].as_u64().unwrap_or(0) > 0, "{v}");
    let sale = json(&["sale", "--data", p(&a), "--item", "ESPRESSO:2", "--pay", "cash"]);
    // The till remembers the CA: a plain `till sync` trusts the hub.
    let r = json(&["sync", "--data", p(&a)]);
    assert_eq!(r["pushed"], 1, "{r}");
    assert!(r["lane_errors"].as_array().is_some_and(|e| e.is_empty()), "{r}");
    let st = json(&["status", "--data", p(&a)]);
    assert_eq!(st["hub_status"], "ok", "{st}");
    assert_eq!(st["pending_total"], 0, "{st}");
    assert_eq!(st["hub_url"].as_str(), Some(url.as_str()));

    // A second till over the IP address (also in the certificate) gets the sale.
    let b = tmp.path().join("b");
    let ip_url = format!("https://127.0.0.1:{}", hub.port);
    json(&["node", "init", "--data", p(&b), "--hub", &ip_url, "--code", &t.code(), "--ca", p(&pki.ca_pem)]);
    json(&["sync", "--data", p(&b)]);
    let sales = json(&["sales", "list", "--data", p(&b)]);
    assert!(sales.as_array().expect("sales").iter().any(|x| x["sale_id"] == sale["sale_id"]), "{sales}");
    let digest_a = s(&json(&["status", "--data", p(&a)])["state_digest"]);
    let digest_b = s(&json(&["status", "--data", p(&b)])["state_digest"]);
    assert_eq!(digest_a, digest_b);

    let list = json(&["devices", "list", "--hub", &url, "--token", &t.admin, "--ca", p(&pki.ca_pem)]);
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");

    // The CA file the till trusts disappears: sync fails and says why.
    std::fs::rename(&pki.ca_pem, tmp.path().join("ca.pem.moved")).expect("move the CA");
    let o = fails(&["sync", "--data", p(&a)]);
    assert!(o.stderr.contains("CA file"), "{}", o.stderr);
    drop(hub);
}

#[test]
fn https_hub_with_a_self_signed_certificate() {
    // `--ca` also takes the hub's own self-signed certificate (see its help).
    let tmp = TempDir::new().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("self-signed");
    let (cert, key) = (tmp.path().join("hub.pem"), tmp.path().join("hub.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    let hub_dir = tmp.path().join("hub");
    let t = sample_tenant(&hub_dir);
    let hub = Hub::start(&hub_dir, &["--tls-cert", p(&cert), "--tls-key", p(&key)]);
    let url = format!("https://localhost:{}", hub.port);
    let code = t.code();
    let o = fails(&["node", "init", "--data", p(&tmp.path().join("x")), "--hub", &url, "--code", &code]);
    assert_untrusted(&o, "self-signed hub without --ca");
    let a = tmp.path().join("a");
    json(&["node", "init", "--data", p(&a), "--hub", &url, "--code", &code, "--ca", p(&cert)]);
    json(&["sale", "--data", p(&a), "--item", "MUG:1", "--pay", "card"]);
    let r = json(&["sync", "--data", p(&a)]);
    assert_eq!(r["pushed"], 1, "{r}");
    assert_eq!(json(&["status", "--data", p(&a)])["hub_status"], "ok");
    drop(hub);
}

#[test]
fn plain_http_to_another_machine_needs_insecure() {
    let tmp = TempDir::new().expect("tempdir");
    // 192.0.2.1 (TEST-NET-1) is never routed: the refusal must come before
    // any connection attempt, so it is fast.
    let url = "http://192.0.2.1:1";
    let dir = tmp.path().join("a");
    let o = fails(&["node", "init", "--data", p(&dir), "--hub", url, "--code", "AAAA-BBBB-CCCC"]);
    assert!(o.elapsed < Duration::from_secs(2), "refused after {:?}: it tried to connect", o.elapsed);
    assert!(o.stderr.contains("--insecure"), "the message mentions --insecure: {}", o.stderr);
    assert!(o.stderr.contains("https://"), "the message suggests https: {}", o.stderr);
    assert!(!dir.join("till.db").exists());

    let o = fails(&["devices", "list", "--hub", url, "--token", "tsa_x"]);
    assert!(o.elapsed < Duration::from_secs(2), "refused after {:?}", o.elapsed);
    assert!(o.stderr.contains("--insecure"), "{}", o.stderr);

    // A host name that is not this machine is refused the same way.
    let o = fails(&["node", "init", "--data", p(&dir), "--hub", "http://hub.example.invalid:8440", "--code", "X"]);
    assert!(o.elapsed < Duration::from_secs(2), "refused after {:?}", o.elapsed);
    assert!(o.stderr.contains("--insecure"), "{}", o.stderr);
}
