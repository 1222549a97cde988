use super::*;

#[test]
fn the_reference_example_parses_with_every_section() {
    let text = include_str!("../../contrib/envol.toml");
    let config = ServeConfig::parse(text).unwrap_or_else(|e| panic!("contrib/envol.toml: {e}"));
    assert!(config.socket.is_some() || config.listen.is_some());
    assert!(!config.exports.is_empty());
    assert!(config.limits.max_inflight.is_some());
    assert!(config.limits.max_connections.is_some());
    assert!(config.limits.request_timeout.is_some());
    assert!(config.kms.endpoint.is_some());
    assert!(config.ceph.op_timeout.is_some());
    assert!(
        config
            .exports
            .iter()
            .any(|e| matches!(e, ExportEntry::Table(_)))
            && config
                .exports
                .iter()
                .any(|e| matches!(e, ExportEntry::Spec(_))),
        "the example shows both forms of an export"
    );
}

#[test]
fn values_are_parsed_as_the_flags_are() {
    let c = ServeConfig::parse(
        r#"
        listen = "127.0.0.1:10810"
        transmission = "async"
        exports = ["a.vol=x:ro", { volume = "b.vol", read_only = true }]
        [limits]
        max_inflight = "64M"
        max_connections = 7
        request_timeout = "500ms"
        [tls]
        cert = "c.pem"
        key = "k.pem"
        mode = "optional"
        "#,
    )
    .unwrap();
    assert_eq!(c.limits.max_inflight, Some(64 << 20));
    assert_eq!(c.limits.max_connections, Some(7));
    assert_eq!(c.limits.request_timeout, Some(Duration::from_millis(500)));
    assert_eq!(c.transmission, Some(TransmissionArg::Async));
    assert_eq!(c.tls.mode, Some(TlsModeArg::Optional));
    assert_eq!(c.exports.len(), 2);
}

fn error(text: &str) -> String {
    let e = ServeConfig::parse(text).expect_err("refused");
    assert_eq!(e.lines().count(), 1, "one line: {e:?}");
    e
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    let e = error("[limits]\nmax_conections = 5\n");
    assert!(e.contains("max_conections") && e.contains("limits"), "{e}");
    let e = error("sockett = \"/x\"\n");
    assert!(e.contains("sockett"), "{e}");
    let e = error("[limits]\nmax_connections = 0\n");
    assert!(e.starts_with("limits.max_connections:"), "{e}");
    let e = error("[limits]\nrequest_timeout = \"soon\"\n");
    assert!(
        e.starts_with("limits.request_timeout:") && e.contains("soon"),
        "{e}"
    );
    let e = error("listen = \"nowhere\"\n");
    assert!(e.starts_with("listen:"), "{e}");
    let e = error("transmission = \"fast\"\n");
    assert!(
        e.contains("transmission") && e.contains("threaded, async"),
        "{e}"
    );
    let e = error("exports = [{ volume = \"a\", nmae = \"b\" }]\n");
    assert!(e.contains("exports"), "{e}");
    let e = error("[tls]\ncert = \"c.pem\"\n");
    assert!(e.contains("tls"), "{e}");
    let e = error("[limits]\nmax_inflight = -1\n");
    assert!(
        e.starts_with("limits.max_inflight:") && e.contains("a number or a string"),
        "{e}"
    );
    let e = error("listen = \n");
    assert!(e.contains("line 1"), "{e}");
}
