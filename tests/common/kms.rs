//! Test harness: real `envol` processes on loopback, driven by real clients.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_kms::error::ProvideErrorMetadata;
use envol::kms::{Kms, RequestContext};

pub const REGION: &str = "us-east-1";

pub fn envol() -> Command {
    Command::new(env!("CARGO_BIN_EXE_envol"))
}

/// Access key id and secret, as printed by `envol kms init` / `user add`.
#[derive(Debug, Clone)]
pub struct Creds {
    pub access_key_id: String,
    pub secret: String,
}

/// Runs an envol command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run envol");
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn parse_creds(stdout: &str) -> Creds {
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| {
                let l = l.trim();
                l.strip_prefix(name)
                    .map(|rest| rest.trim_start().trim_start_matches('=').trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in output:\n{stdout}"))
    };
    Creds {
        access_key_id: field("aws_access_key_id"),
        secret: field("aws_secret_access_key"),
    }
}

/// The account id `envol kms init` prints (`account: 123456789012`).
pub fn parse_account(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("account:")
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no account id in output:\n{stdout}"))
}

/// Starts `envol kms serve` on `data` (an initialised data directory) on a
/// free loopback port; returns the process and its `http://` endpoint, read
/// from the line it prints when ready. Its stdout keeps being drained so the
/// server never blocks on a full pipe.
pub fn spawn_kms_serve(data: &Path) -> (Child, String) {
    spawn_kms_serve_with(data, &[], Stdio::inherit())
}

/// As [`spawn_kms_serve`], over TLS with the certificate `kms init
/// --self-signed-cert` made in `data`; returns the `https://` endpoint
/// (clients trust it through `data/tls/cert.pem`).
pub fn spawn_kms_serve_tls(data: &Path) -> (Child, String) {
    let cert = data.join("tls/cert.pem");
    let key = data.join("tls/key.pem");
    let args = [
        "--tls-cert",
        cert.to_str().expect("utf-8 path"),
        "--tls-key",
        key.to_str().expect("utf-8 path"),
    ];
    spawn_kms_serve_with(data, &args, Stdio::inherit())
}

/// [`spawn_kms_serve`] with more arguments (limits, `--tls-cert`, ...) and
/// somewhere for its log (stderr) to go; the endpoint is `http://` or
/// `https://`.
pub fn spawn_kms_serve_with(data: &Path, extra: &[&str], stderr: Stdio) -> (Child, String) {
    let mut child = envol()
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .env("ENVOL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn envol kms serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("kms serve printed nothing").unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

/// A KMS data directory with a running `envol kms serve`.
pub struct KmsServer {
    pub dir: tempfile::TempDir,
    pub root: Creds,
    pub account_id: String,
    pub endpoint: String,
    child: Option<Child>,
    /// More `kms serve` arguments, kept for restarts.
    extra: Vec<String>,
}

impl KmsServer {
    pub fn start() -> KmsServer {
        KmsServer::start_with(&[])
    }

    /// [`KmsServer::start`] with more `kms serve` arguments (`--metrics ADDR`, ...).
    pub fn start_with(extra: &[&str]) -> KmsServer {
        let dir = tempfile::tempdir().unwrap();
        let out = run_ok(
            envol()
                .args(["kms", "init", "--data"])
                .arg(data_path(dir.path())),
        );
        let root = parse_creds(&out);
        let account_id = parse_account(&out);
        let mut s = KmsServer {
            dir,
            root,
            account_id,
            endpoint: String::new(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    pub fn data(&self) -> PathBuf {
        data_path(self.dir.path())
    }

    fn spawn(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (child, endpoint) = spawn_kms_serve_with(&self.data(), &extra, Stdio::inherit());
        self.endpoint = endpoint;
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: graceful shutdown.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            for _ in 0..200 {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(
                        status.success(),
                        "envol kms serve exited with {status} after SIGTERM (expected 0)"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("envol kms serve did not stop within 10 s of SIGTERM");
        }
    }

    /// SIGKILL: a crash, no graceful shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn add_user(&self, name: &str) -> Creds {
        parse_creds(&run_ok(
            envol()
                .args(["kms", "user", "add", name, "--data"])
                .arg(self.data()),
        ))
    }

    pub fn user_arn(&self, name: &str) -> String {
        format!("arn:aws:iam::{}:user/{}", self.account_id, name)
    }

    pub fn client(&self, creds: &Creds) -> aws_sdk_kms::Client {
        sdk_client(&self.endpoint, creds, None)
    }
}

impl Drop for KmsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn data_path(tmp: &Path) -> PathBuf {
    tmp.join("kms")
}

/// The official AWS SDK client, pointed at `endpoint`, with static
/// credentials and (optionally) a fixed clock for signing.
pub fn sdk_client(
    endpoint: &str,
    creds: &Creds,
    signing_time: Option<std::time::SystemTime>,
) -> aws_sdk_kms::Client {
    let mut b = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled())
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            &creds.access_key_id,
            &creds.secret,
            None,
            None,
            "envol-test",
        ));
    if let Some(t) = signing_time {
        b = b.time_source(aws_smithy_async::time::StaticTimeSource::new(t));
    }
    aws_sdk_kms::Client::from_conf(b.build())
}

/// Adds an Allow statement for `user_arn` and `actions` to a key's policy.
pub async fn allow_in_key_policy(
    c: &aws_sdk_kms::Client,
    arn: &str,
    user_arn: &str,
    actions: &[&str],
) {
    let p = c
        .get_key_policy()
        .key_id(arn)
        .policy_name("default")
        .send()
        .await
        .unwrap();
    let mut doc = serde_json::from_str::<serde_json::Value>(p.policy().unwrap()).unwrap();
    doc["Statement"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "Effect": "Allow",
            "Principal": {"AWS": user_arn},
            "Action": actions,
            "Resource": "*",
        }));
    c.put_key_policy()
        .key_id(arn)
        .policy_name("default")
        .policy(doc.to_string())
        .send()
        .await
        .unwrap();
}

/// Creates a key with CreateKey's defaults; returns its ARN.
pub async fn create_key_arn(client: &aws_sdk_kms::Client) -> String {
    client
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .arn()
        .unwrap()
        .to_string()
}

/// The AWS error code of an SDK error (`<none>` if it has none), for
/// asserting which error a request got.
pub fn error_code<E: ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("<none>").to_string()
}

/// Runs one operation on the service core (no HTTP) as the account root;
/// an error becomes its AWS type.
pub fn call_as_root(
    kms: &Kms,
    op: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let ctx = RequestContext {
        principal: kms.root_principal(),
        request_id: "test".into(),
        source: None,
        secure_transport: false,
    };
    kms.handle(&ctx, op, body.to_string().as_bytes())
        .map_err(|e| e.kind.aws_type().to_string())
}
