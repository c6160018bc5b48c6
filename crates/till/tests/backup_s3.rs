//! Backups to S3-compatible storage with the real binary against a real S3
//! server process: moto's (`python3 -m moto.server`, installed by
//! scripts/setup). Not a mock: the till signs and sends real S3 requests.

use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_till");
const BUCKET: &str = "tillsync-backups";

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request without a body; returns the status line.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.lines().next().unwrap_or("").to_string())
}

impl Moto {
    fn start() -> Moto {
        let found = Command::new("python3").args(["-c", "import moto.server"]).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "moto's S3 server is not installed: run scripts/setup (it installs moto[server] with pip)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m moto.server");
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if http(port, "GET", "/").is_ok_and(|l| l.contains(" 200 ")) {
                break;
            }
            assert!(Instant::now() < end, "moto did not answer on port {port} within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        // moto accepts unsigned requests: a plain PUT creates the bucket.
        let l = http(port, "PUT", &format!("/{BUCKET}")).unwrap();
        assert!(l.contains(" 200 "), "create bucket: {l}");
        moto
    }

    fn client(&self) -> object_store::aws::AmazonS3 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .build()
            .unwrap()
    }
}

struct Till<'a> {
    moto: &'a Moto,
}

impl Till<'_> {
    fn run(&self, args: &[&str]) -> Output {
        // Credentials from the usual AWS variables; the endpoint from the
        // environment too (commands below also pass --s3-endpoint).
        Command::new(BIN)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_ENDPOINT_URL", &self.moto.endpoint)
            .env("AWS_REGION", "us-east-1")
            .stdin(Stdio::null())
            .output()
            .expect("run till")
    }

    fn ok(&self, args: &[&str]) -> Value {
        let o = self.run(args);
        assert!(o.status.success(), "till {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        if args[0] == "backup" {
            // Progress bars only on a terminal: nothing on a captured stderr.
            assert!(o.stderr.is_empty(), "till {args:?} wrote to stderr: {}", String::from_utf8_lossy(&o.stderr));
        }
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "till {args:?} should fail");
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(e.starts_with("error:") && e.trim().lines().count() == 1, "one-line error: {e}");
        e
    }
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

/// Pads the till's database with incompressible bytes so the object spans
/// several multipart parts (the state digest does not see this table).
fn pad(db: &Path, len: usize) {
    let conn = tillsync_store::keys::connect(db).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let blob: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    conn.execute_batch("CREATE TABLE test_pad(b BLOB)").unwrap();
    conn.execute("INSERT INTO test_pad(b) VALUES (?1)", [blob]).unwrap();
}

#[test]
fn backups_to_s3_round_trip_list_prune_and_catch_damage() {
    let moto = Moto::start();
    let till = Till { moto: &moto };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("till");
    till.ok(&["node", "init", "--data", p(&t), "--offline", "--sample", "--json"]);
    for _ in 0..3 {
        till.ok(&["sale", "--data", p(&t), "--item", "LATTE:2", "--pay", "cash", "--json"]);
    }
    pad(&t.join("till.db"), 20 << 20);
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    let dest = format!("s3://{BUCKET}/shop");

    // Without credentials the command says what to set.
    let o = Command::new(BIN)
        .args(["backup", "list", "--from", &dest, "--s3-endpoint", &moto.endpoint])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("AWS_ACCESS_KEY_ID"), "{}", String::from_utf8_lossy(&o.stderr));

    let first = till.ok(&[
        "backup",
        "create",
        "--data",
        p(&t),
        "--to",
        &dest,
        "--s3-endpoint",
        &moto.endpoint,
        "--passphrase-file",
        p(&pw),
        "--json",
    ]);
    assert!(first["stored_bytes"].as_u64().unwrap() > 16 << 20, "spans several 8 MiB parts: {first}");
    till.ok(&["sale", "--data", p(&t), "--item", "COOKIE", "--pay", "cash", "--json"]);
    std::thread::sleep(Duration::from_millis(5));
    // The endpoint from AWS_ENDPOINT_URL this time.
    let second = till.ok(&["backup", "create", "--data", p(&t), "--to", &dest, "--passphrase-file", p(&pw), "--json"]);
    let list = till.ok(&["backup", "list", "--from", &dest, "--json"]);
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|m| m["backup_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [first["backup_id"].as_str().unwrap(), second["backup_id"].as_str().unwrap()]);

    // What S3 holds: objects and manifests only, the object encrypted.
    let s3 = moto.client();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let key = object_store::path::Path::from(format!("shop/{}.tsb", second["backup_id"].as_str().unwrap()));
    let raw = rt.block_on(async { s3.get(&key).await.unwrap().bytes().await.unwrap() });
    assert!(raw.starts_with(b"age-encryption.org/v1"), "age-encrypted");
    assert_eq!(raw.len() as u64, second["stored_bytes"].as_u64().unwrap());

    let v = till.ok(&["backup", "verify", "--from", &dest, "--passphrase-file", p(&pw), "--json"]);
    assert_eq!(v["integrity"], "ok");
    assert_eq!(v["sales"], 4);
    assert_eq!(v["backup_id"], second["backup_id"]);
    let v = till.ok(&[
        "backup",
        "verify",
        "--from",
        &dest,
        first["backup_id"].as_str().unwrap(),
        "--passphrase-file",
        p(&pw),
        "--json",
    ]);
    assert_eq!(v["sales"], 3);

    // Restore into a new folder: the same state.
    let r = tmp.path().join("restored");
    till.ok(&["backup", "restore", "--from", &dest, "--into", p(&r), "--passphrase-file", p(&pw), "--json"]);
    let digest = |d: &Path| till.ok(&["status", "--data", p(d), "--json"])["state_digest"].clone();
    assert_eq!(digest(&r), digest(&t));

    // Retention deletes the oldest.
    let pr = till.ok(&["backup", "prune", "--from", &dest, "--keep", "1", "--json"]);
    assert_eq!(pr["removed"], serde_json::json!([first["backup_id"]]));
    let list = till.ok(&["backup", "list", "--from", &dest, "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["backup_id"], second["backup_id"]);
    let left = rt.block_on(async {
        use futures_util::StreamExt;
        s3.list(None).map(|m| m.unwrap().location.to_string()).collect::<Vec<_>>().await
    });
    assert_eq!(left.len(), 2, "one object and its manifest: {left:?}");

    // A manifest whose object is missing (an upload that never completed)
    // is not listed.
    let ghost = object_store::path::Path::from("shop/1-ghost.json");
    let mut fake = second.clone();
    fake["backup_id"] = "1-ghost".into();
    rt.block_on(s3.put(&ghost, serde_json::to_vec(&fake).unwrap().into())).unwrap();
    assert_eq!(till.ok(&["backup", "list", "--from", &dest, "--json"]).as_array().unwrap().len(), 1);

    // A flipped byte in the stored object fails verify, clearly.
    let mut flipped = raw.to_vec();
    let i = flipped.len() - 100;
    flipped[i] ^= 0x40;
    rt.block_on(s3.put(&key, flipped.into())).unwrap();
    let e = till.fails(&["backup", "verify", "--from", &dest, "--passphrase-file", p(&pw)]);
    assert!(e.contains("damaged"), "{e}");
    // A truncated one too, and a restore from it leaves nothing behind.
    rt.block_on(s3.put(&key, raw.slice(..raw.len() / 2).into())).unwrap();
    let e = till.fails(&["backup", "verify", "--from", &dest, "--passphrase-file", p(&pw)]);
    assert!(e.contains("damaged"), "{e}");
    let r2 = tmp.path().join("restored2");
    till.fails(&["backup", "restore", "--from", &dest, "--into", p(&r2), "--passphrase-file", p(&pw)]);
    assert!(!r2.join("till.db").exists());
    // A bucket that does not exist is an error that names the address.
    let e = till.fails(&["backup", "list", "--from", "s3://no-such-bucket/x"]);
    assert!(e.contains("s3://no-such-bucket/x"), "{e}");

    // From the till's config (as `till node run` schedules it): the
    // destination and endpoint there win over AWS_ENDPOINT_URL, wrong here.
    till.ok(&["config", "set", "--data", p(&t), "backup.destination", &dest, "--json"]);
    till.ok(&["config", "set", "--data", p(&t), "backup.s3_endpoint", &moto.endpoint, "--json"]);
    till.ok(&["config", "set", "--data", p(&t), "backup.passphrase_file", p(&pw), "--json"]);
    let o = Command::new(BIN)
        .args(["backup", "create", "--data", p(&t), "--json"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let third: Value = serde_json::from_slice(&o.stdout).unwrap();
    let v = till.ok(&["backup", "verify", "--from", &dest, "--passphrase-file", p(&pw), "--json"]);
    assert_eq!(v["backup_id"], third["backup_id"]);
    assert_eq!(v["integrity"], "ok");
}
