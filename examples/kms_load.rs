//! Load generator for the KMS: N concurrent clients (the official
//! `aws-sdk-kms`, each its own client and connection pool) alternating
//! GenerateDataKey and Decrypt of what they got, for a fixed time. Prints
//! requests/s, latency percentiles and the error count. Used by
//! `scripts/load.sh`; not a test (speed lives in benchmarks).
//!
//! ```text
//! cargo run --release --example kms_load -- ENDPOINT ACCESS_KEY_ID SECRET KEY_ID [CLIENTS] [SECONDS]
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: kms_load ENDPOINT ACCESS_KEY_ID SECRET KEY_ID [CLIENTS] [SECONDS]");
        std::process::exit(2);
    }
    let (endpoint, akid, secret, key) = (&args[1], &args[2], &args[3], args[4].clone());
    let clients: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(100);
    let seconds: u64 = args.get(6).and_then(|s| s.parse().ok()).unwrap_or(30);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(akid, secret, None, None, "load"))
            .build();
        let client = aws_sdk_kms::Client::from_conf(conf);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let context: HashMap<String, String> =
                [("envol:volume".to_string(), format!("load-{i}"))].into();
            while Instant::now() < deadline {
                let t = Instant::now();
                let generated = client
                    .generate_data_key()
                    .key_id(&key)
                    .number_of_bytes(64)
                    .set_encryption_context(Some(context.clone()))
                    .send()
                    .await;
                latencies.push(t.elapsed());
                let Ok(generated) = generated else {
                    errors += 1;
                    continue;
                };
                let Some(blob) = generated.ciphertext_blob().cloned() else {
                    errors += 1;
                    continue;
                };
                let t = Instant::now();
                let decrypted = client
                    .decrypt()
                    .ciphertext_blob(blob)
                    .set_encryption_context(Some(context.clone()))
                    .send()
                    .await;
                latencies.push(t.elapsed());
                match decrypted {
                    Ok(d) if d.plaintext() == generated.plaintext() => {}
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((l, e)) => {
                all.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds as f64);
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "clients={clients} seconds={seconds} requests={} errors={errors} req/s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    if errors > 0 {
        std::process::exit(1);
    }
}
