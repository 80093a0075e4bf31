use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Instant;

use super::*;

/// A one-connection HTTP server on loopback: it reads the request head, hands it back over
/// the channel, then writes `answer` (nothing when `None`: a LAPI that never answers).
fn serve_once(answer: Option<Vec<u8>>) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let _ = tx.send(head);
        match answer {
            Some(bytes) => write_all_ignoring_errors(stream, &bytes),
            None => std::thread::sleep(Duration::from_secs(5)),
        }
    });
    (base, rx)
}

fn write_all_ignoring_errors(mut stream: TcpStream, bytes: &[u8]) {
    for chunk in bytes.chunks(64 << 10) {
        if stream.write_all(chunk).is_err() {
            return;
        }
    }
}

fn http(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// One pull without filters, parsed (an owned copy, for comparing).
fn pulled(lapi: &Lapi) -> Result<Stream<'static>, LapiError> {
    let body = lapi.stream("K", false, &StreamFilter::default())?;
    let body: &'static [u8] = Box::leak(body.into_boxed_slice());
    parse_stream(body)
}

#[test]
fn the_stream_carries_its_filters_as_query_parameters() {
    let (base, heads) = serve_once(Some(http("200 OK", br#"{"new":null,"deleted":null}"#)));
    let filter = StreamFilter {
        origins: vec!["CAPI".into(), "lists".into()],
        scenarios_containing: vec!["ssh".into()],
        scenarios_not_containing: vec![],
    };
    Lapi::new(&base).stream("K", false, &filter).unwrap();
    let head = heads.recv().unwrap();
    assert!(
        head.starts_with("GET /v1/decisions/stream?origins=CAPI%2Clists&scenarios_containing=ssh "),
        "{head}"
    );
}

#[test]
fn the_filters_are_applied_again_to_what_comes_back() {
    let filter = StreamFilter {
        origins: vec!["CAPI".into()],
        scenarios_containing: vec!["SSH".into(), "http".into()],
        scenarios_not_containing: vec!["probing".into()],
    };
    assert!(filter.accepts("CAPI", "crowdsecurity/ssh-bf"));
    assert!(!filter.accepts("cscli", "crowdsecurity/ssh-bf"), "origin");
    assert!(
        !filter.accepts("CAPI", "crowdsecurity/smb-bf"),
        "no wanted word"
    );
    assert!(
        !filter.accepts("CAPI", "crowdsecurity/http-probing"),
        "unwanted word"
    );
    assert!(StreamFilter::default().accepts("anything", ""));
}

#[test]
fn stream_nulls_are_empty_lists_and_decisions_keep_their_fields() {
    let body = br#"{"new":[{"id":7,"origin":"cscli","scenario":"manual 'ban' from 'h'","scope":"Range","type":"ban","value":"fd77:1::/64","duration":"29.9\u00b5s","until":"x"}],"deleted":null}"#;
    let (base, heads) = serve_once(Some(http("200 OK", body)));
    let body = Lapi::new(&base)
        .stream("KEY", true, &StreamFilter::default())
        .unwrap();
    let stream = parse_stream(&body).unwrap();
    assert!(stream.deleted.is_empty());
    assert_eq!(stream.new.len(), 1);
    let d = &stream.new[0];
    assert_eq!((d.id, &*d.scope, &*d.kind), (7, "Range", "ban"));
    assert_eq!(d.duration, "29.9\u{b5}s");
    let head = heads.recv().unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("get /v1/decisions/stream?startup=true "),
        "{head}"
    );
    assert!(head.contains("x-api-key: key"), "{head}");
    assert!(head.contains("user-agent: portsentry/"), "{head}");

    let (base, _) = serve_once(Some(http("200 OK", br#"{"new":null,"deleted":null}"#)));
    assert_eq!(pulled(&Lapi::new(&base)), Ok(Stream::default()));
}

#[test]
fn garbage_and_error_statuses_are_errors_that_say_so() {
    let (base, _) = serve_once(Some(http("200 OK", b"<html>hello</html>")));
    let err = pulled(&Lapi::new(&base)).unwrap_err();
    assert!(
        matches!(&err, LapiError::Garbage(t) if t.contains("<html>")),
        "{err}"
    );
    assert!(err.retryable());

    let (base, _) = serve_once(Some(http(
        "500 Internal Server Error",
        b"{\"message\":\"db locked\"}",
    )));
    let err = pulled(&Lapi::new(&base)).unwrap_err();
    assert_eq!(
        err,
        LapiError::Status(500, "{\"message\":\"db locked\"}".into())
    );
    assert!(err.retryable() && !err.unauthorized());

    let (base, _) = serve_once(Some(http("401 Unauthorized", b"{}")));
    let err = Lapi::new(&base)
        .post_alerts("T", &serde_json::json!([]))
        .unwrap_err();
    assert!(err.unauthorized());
    let (base, _) = serve_once(Some(http("400 Bad Request", b"{}")));
    let err = Lapi::new(&base)
        .post_alerts("T", &serde_json::json!([]))
        .unwrap_err();
    assert!(!err.retryable(), "a 400 does not get better by retrying");
}

#[test]
fn a_huge_answer_is_cut_at_the_cap() {
    let mut body = b"{\"new\":[".to_vec();
    body.resize(BODY_CAP as usize + 4096, b' ');
    let (base, _) = serve_once(Some(http("200 OK", &body)));
    assert_eq!(pulled(&Lapi::new(&base)), Err(LapiError::TooLarge));
}

#[test]
fn a_silent_lapi_times_out_and_a_closed_port_is_refused() {
    let (base, _) = serve_once(None);
    let lapi = Lapi::with_timeouts(
        &base,
        Duration::from_millis(300),
        Duration::from_millis(400),
    );
    let started = Instant::now();
    let err = pulled(&lapi).unwrap_err();
    assert_eq!(err, LapiError::Unreachable("timed out".into()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = Lapi::new(&base).login("m", "secret-password").unwrap_err();
    assert_eq!(err, LapiError::Unreachable("connection refused".into()));
    assert!(!err.to_string().contains("secret-password"));
}

#[test]
fn delete_is_exact_by_scope_value_and_origin() {
    let (base, heads) = serve_once(Some(http("200 OK", br#"{"nbDeleted":"1"}"#)));
    let n = Lapi::new(&base)
        .delete_decision("TOKEN", "Range", "10.0.0.0/24", "portsentry")
        .unwrap();
    assert_eq!(n, 1);
    let head = heads.recv().unwrap();
    let first = head.lines().next().unwrap();
    assert_eq!(
        first,
        "DELETE /v1/decisions?scopes=Range&value=10.0.0.0%2F24&origin=portsentry HTTP/1.1"
    );
    assert!(head.contains("Bearer TOKEN"), "{head}");
}

#[test]
fn a_post_answers_the_alert_ids_in_order_and_an_odd_answer_is_no_ids() {
    let (base, _) = serve_once(Some(http("201 Created", br#"["12","13"]"#)));
    let ids = Lapi::new(&base)
        .post_alerts("T", &serde_json::json!([{}, {}]))
        .unwrap();
    assert_eq!(ids, ["12", "13"]);
    let (base, _) = serve_once(Some(http("201 Created", b"null")));
    assert_eq!(
        Lapi::new(&base).post_alerts("T", &serde_json::json!([{}])),
        Ok(Vec::new()),
        "accepted all the same: posting again would post twice"
    );
}

#[test]
fn the_decision_ids_of_an_alert_come_from_get_alert_by_id() {
    let body = br#"{"capacity":0,"decisions":[{"duration":"11m42s","id":41,"origin":"portsentry","scope":"Ip","type":"ban","value":"10.0.0.1"},{"id":42}],"events":null,"id":5,"source":{"scope":"Ip","value":"10.0.0.1"}}"#;
    let (base, heads) = serve_once(Some(http("200 OK", body)));
    let ids = Lapi::new(&base).alert_decision_ids("TOKEN", "5").unwrap();
    assert_eq!(ids, [41, 42]);
    let head = heads.recv().unwrap();
    assert_eq!(head.lines().next(), Some("GET /v1/alerts/5 HTTP/1.1"));
    assert!(head.contains("Bearer TOKEN"), "{head}");

    let (base, _) = serve_once(Some(http("200 OK", br#"{"id":5,"decisions":null}"#)));
    assert_eq!(
        Lapi::new(&base).alert_decision_ids("T", "5"),
        Ok(Vec::new())
    );
    let (base, _) = serve_once(Some(http(
        "404 Not Found",
        br#"{"message":"object not found"}"#,
    )));
    let err = Lapi::new(&base).alert_decision_ids("T", "6").unwrap_err();
    assert!(matches!(err, LapiError::Status(404, _)), "{err}");
    // An id that is not a number never reaches a path (no request is made at all).
    let err = Lapi::new("http://127.0.0.1:9")
        .alert_decision_ids("T", "../decisions")
        .unwrap_err();
    assert!(matches!(err, LapiError::Garbage(_)), "{err}");
}

#[test]
fn delete_by_id_is_one_decision_and_a_decision_already_gone_counts_as_done() {
    let (base, heads) = serve_once(Some(http("200 OK", br#"{"nbDeleted":"1"}"#)));
    assert_eq!(Lapi::new(&base).delete_decision_by_id("TOKEN", 41), Ok(1));
    let head = heads.recv().unwrap();
    assert_eq!(
        head.lines().next(),
        Some("DELETE /v1/decisions/41 HTTP/1.1")
    );
    assert!(head.contains("Bearer TOKEN"), "{head}");
    // What crowdsec 1.4.6 answers for an id it does not have.
    let (base, _) = serve_once(Some(http(
        "500 Internal Server Error",
        br#"{"message":"decision with id '999' doesn't exist: unable to delete"}"#,
    )));
    assert_eq!(Lapi::new(&base).delete_decision_by_id("T", 999), Ok(0));
    let (base, _) = serve_once(Some(http("404 Not Found", b"{}")));
    assert_eq!(Lapi::new(&base).delete_decision_by_id("T", 999), Ok(0));
    // Any other 500 is still a failure to retry.
    let (base, _) = serve_once(Some(http(
        "500 Internal Server Error",
        br#"{"message":"database is locked"}"#,
    )));
    let err = Lapi::new(&base).delete_decision_by_id("T", 7).unwrap_err();
    assert!(err.retryable(), "{err}");
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate, made with
/// Debian's `openssl` in `dir` (keys mode 0600): (ca, server cert, server key, client
/// cert, client key).
fn private_pki(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    use std::os::unix::fs::PermissionsExt;
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-subj", "/CN=127.0.0.1"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        run(&req);
        std::fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
        std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ]
    .map(|f| dir.join(f))
}

/// A loopback HTTPS server that asks for a client certificate signed by `ca` and answers
/// each connection that presents one with an empty stream; `true` on the channel for each
/// request served, `false` for each handshake that failed.
fn tls_lapi(pki: &[std::path::PathBuf; 5]) -> (String, mpsc::Receiver<bool>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki[0]).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::clone(&provider),
    )
    .build()
    .unwrap();
    let chain = CertificateDer::pem_file_iter(&pki[1])
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki[2]).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let config = std::sync::Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let conn = rustls::ServerConnection::new(std::sync::Arc::clone(&config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = String::new();
            let mut reader = BufReader::new(&mut tls);
            let served = loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break false,
                    Ok(_) if line == "\r\n" => break true,
                    Ok(_) => head.push_str(&line),
                }
            };
            if served {
                let _ = tls.write_all(&http("200 OK", br#"{"new":null,"deleted":null}"#));
                let _ = tls.flush();
            }
            let _ = tx.send(served);
        }
    });
    (base, rx)
}

#[test]
fn a_lapi_behind_a_private_ca_asking_for_a_client_certificate_is_reached_with_the_three_keys() {
    let dir = tempfile::tempdir().unwrap();
    let pki = private_pki(dir.path());
    let (base, served) = tls_lapi(&pki);
    let filter = StreamFilter::default();
    let tls = Tls {
        ca_cert: Some(pki[0].clone()),
        client: Some((pki[3].clone(), pki[4].clone())),
    };
    // With the CA and the client certificate: answered.
    let lapi = Lapi::with_tls(&base, &tls).unwrap();
    let body = lapi.stream("K", true, &filter).unwrap();
    assert_eq!(parse_stream(&body).unwrap(), Stream::default());
    assert_eq!(served.recv_timeout(Duration::from_secs(5)), Ok(true));
    // Without the CA: the server's certificate is not trusted.
    let err = Lapi::new(&base).stream("K", true, &filter).unwrap_err();
    assert!(
        matches!(&err, LapiError::Unreachable(t) if t.to_lowercase().contains("issuer")),
        "{err}"
    );
    // With the CA but no client certificate: the server refuses the handshake.
    let ca_only = Tls {
        ca_cert: Some(pki[0].clone()),
        client: None,
    };
    let err = Lapi::with_tls(&base, &ca_only)
        .unwrap()
        .stream("K", true, &filter)
        .unwrap_err();
    assert!(matches!(err, LapiError::Unreachable(_)), "{err}");
    assert!(
        served.try_iter().all(|ok| !ok),
        "nothing served without a certificate"
    );
}

#[test]
fn unusable_tls_files_are_errors_naming_the_key_and_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let tls = Tls {
        ca_cert: Some(not_pem.clone()),
        client: None,
    };
    let err = Lapi::with_tls("https://127.0.0.1:1", &tls).err().unwrap();
    assert!(
        err.starts_with("CROWDSEC_CA_CERT: ") && err.contains("ca.pem holds no PEM certificate"),
        "{err}"
    );
    let pki = private_pki(dir.path());
    std::fs::set_permissions(&pki[4], std::fs::Permissions::from_mode(0o644)).unwrap();
    let tls = Tls {
        ca_cert: None,
        client: Some((pki[3].clone(), pki[4].clone())),
    };
    let err = Lapi::with_tls("https://127.0.0.1:1", &tls).err().unwrap();
    assert!(
        err.starts_with("CROWDSEC_KEY: ") && err.contains("readable by every user"),
        "{err}"
    );
}
