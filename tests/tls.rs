//! HTTPS on both sides, with a test CA made with openssl, on loopback.
//!
//! To the upstream: a TLS terminator (rustls) in front of the simulator;
//! viewgate verifies the certificate, speaks HTTP/2 when offered and
//! HTTP/1.1 when not. As a server (`server.tls`): HTTP/1.1 and HTTP/2 by
//! ALPN, verified against the CA, and the certificate swapped (by the
//! reload function, by SIGHUP to a real `viewgate serve`, and by the files
//! changing) while requests run, a bad pair keeping the old one.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{signal, write_private};
use common::{TenantSpec, World, WorldSpec, viewers};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use viewgate::config::TlsFiles;
use viewgate::keys::KeyHash;
use viewgate::listener::tls::PairProblem;
use viewgate::listener::{self, ServerTls};
use viewgate::sim::{Fault, SimConfig, SimKey, Simulator};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// A test CA (`ca.pem`, `ca.key`), valid for two days.
fn make_ca(dir: &Path) {
    let mut ca = vec!["req", "-x509"];
    ca.extend(EC);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=viewgate test CA",
    ]);
    openssl(dir, &ca);
}

/// A leaf for 127.0.0.1 signed by the test CA (`{name}.pem`, `{name}.key`),
/// with its own key, serial and common name.
fn make_leaf(dir: &Path, name: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subject = format!("/CN=viewgate test {name}");
    let mut request = vec!["req"];
    request.extend(EC);
    request.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
    openssl(dir, &request);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
}

/// A CA and a leaf for 127.0.0.1 (`leaf.pem`, `leaf.key`), valid for two days.
fn make_certs(dir: &Path) {
    make_ca(dir);
    make_leaf(dir, "leaf");
}

/// Terminates TLS on a free port and pipes bytes to `backend`; records the ALPN protocol of each connection.
async fn tls_terminator(
    dir: &Path,
    backend: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> (String, Arc<Mutex<Vec<String>>>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("leaf.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let protocol = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map_or("none".to_string(), |p| {
                        String::from_utf8_lossy(p).into_owned()
                    });
                record.lock().unwrap().push(protocol);
                let Ok(mut upstream) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (url, seen)
}

/// A world whose gateway calls `url` with the upstream key of `behind`'s simulator.
fn spec(url: String, ca_file: Option<&Path>, behind: &World) -> WorldSpec {
    let extra = ca_file.map_or(String::new(), |f| {
        format!("  ca_file: \"{}\"\n", f.display())
    });
    WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        base_url: Some(url),
        upstream_key: Some(behind.upstream_key.clone()),
        max_retries: 0,
        upstream_yaml: Box::leak(extra.into_boxed_str()),
        ..WorldSpec::default()
    }
}

#[tokio::test]
async fn https_upstream_with_http2_and_a_verified_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    // `plain` provides the simulator; `w` reaches it through the terminator.
    let plain = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        ..WorldSpec::default()
    })
    .await;
    let (url, seen) = tls_terminator(dir.path(), plain.sim.addr(), &[b"h2", b"http/1.1"]).await;
    let w = World::start(spec(url, Some(&dir.path().join("ca.pem")), &plain)).await;
    let r = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.meta()["cache"], "miss");
    assert_eq!(
        plain.sim.calls_total(),
        1,
        "the call went through TLS to the simulator"
    );
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["h2"],
        "HTTP/2 negotiated by ALPN"
    );
}

#[tokio::test]
async fn https_falls_back_to_http1_and_refuses_an_unknown_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let plain = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        ..WorldSpec::default()
    })
    .await;
    let (url, seen) = tls_terminator(dir.path(), plain.sim.addr(), &[b"http/1.1"]).await;
    let w = World::start(spec(url.clone(), Some(&dir.path().join("ca.pem")), &plain)).await;
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        200
    );
    assert_eq!(seen.lock().unwrap().as_slice(), ["http/1.1"]);

    // Without the test CA, the certificate is not trusted: nothing is sent.
    let untrusting = World::start(spec(url, None, &plain)).await;
    let r = untrusting.post(Some("crm"), &viewers("acc-2", 0, 10)).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.code(), "UPSTREAM_UNAVAILABLE");
    assert_eq!(plain.sim.calls_total(), 1);
}

// ---- viewgate as an HTTPS server ---------------------------------------------------

/// Generous bound for anything that should happen "soon" on a loaded machine.
const SOON: Duration = Duration::from_secs(20);

/// The leaf certificate (DER) of `{name}.pem`.
fn leaf_der(dir: &Path, name: &str) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

/// Puts leaf `cert`'s certificate and leaf `key`'s key where the server reads
/// them (`server.pem`, `server.key`), each file replaced whole.
fn install(dir: &Path, cert: &str, key: &str) -> TlsFiles {
    let files = TlsFiles {
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
    };
    for (from, to) in [
        (format!("{cert}.pem"), &files.cert_file),
        (format!("{key}.key"), &files.key_file),
    ] {
        let staged = to.with_extension("new");
        std::fs::copy(dir.join(from), &staged).unwrap();
        std::fs::rename(&staged, to).unwrap();
    }
    files
}

/// One client connection to the gateway over TLS, verified against the test CA.
struct Https {
    addr: SocketAddr,
    /// The certificate the server presented.
    leaf: CertificateDer<'static>,
    /// The protocol ALPN chose.
    protocol: String,
    sender: Sender,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Https {
    async fn connect(addr: SocketAddr, ca: &Path, alpn: &[&[u8]]) -> Https {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect("the handshake verifies against the test CA");
        let session = tls.get_ref().1;
        let leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
        let protocol = session.alpn_protocol().map_or("none".to_string(), |p| {
            String::from_utf8_lossy(p).into_owned()
        });
        let io = TokioIo::new(tls);
        let sender = if protocol == "h2" {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(send)
        };
        Https {
            addr,
            leaf,
            protocol,
            sender,
        }
    }

    fn request(&self, key: &str, body: String) -> http::Request<Full<Bytes>> {
        let builder = match self.sender {
            Sender::H1(_) => {
                http::Request::post("/v2/profiles").header("host", self.addr.to_string())
            }
            Sender::H2(_) => http::Request::post(format!("https://{}/v2/profiles", self.addr)),
        };
        builder
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    /// POSTs `body`: the status, and the body as text.
    async fn post(&mut self, key: &str, body: String) -> (u16, String) {
        let request = self.request(key, body);
        let response = match &mut self.sender {
            Sender::H1(send) => send.send_request(request).await,
            Sender::H2(send) => send.send_request(request).await,
        };
        read(response).await
    }

    /// A handle for concurrent requests on this HTTP/2 connection.
    fn h2(&self) -> http2::SendRequest<Full<Bytes>> {
        match &self.sender {
            Sender::H2(send) => send.clone(),
            Sender::H1(_) => panic!("not an HTTP/2 connection"),
        }
    }
}

async fn read(
    response: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> (u16, String) {
    let response = response.expect("the request is answered");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The world's gateway, also served over TLS with `tls`.
async fn https_listener(w: &World, tls: &Arc<ServerTls>) -> listener::RunningServer {
    listener::spawn_with_tls(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        w.live.service(),
        listener::ServerOptions::from_config(&w.gateway.config().server),
        Some(Arc::clone(tls)),
    )
    .await
    .unwrap()
}

fn crm_world() -> WorldSpec {
    WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        ..WorldSpec::default()
    }
}

#[tokio::test]
async fn the_https_listener_speaks_http2_and_http1_by_alpn_with_a_verified_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let files = install(dir.path(), "leaf", "leaf");
    let w = World::start(crm_world()).await;
    let tls = ServerTls::load(&files).unwrap();
    let server = https_listener(&w, &tls).await;
    let ca = dir.path().join("ca.pem");
    for (alpn, expected) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], "h2"),
        (&[b"http/1.1".as_slice()][..], "http/1.1"),
        (&[][..], "none"),
    ] {
        let mut client = Https::connect(server.addr(), &ca, alpn).await;
        assert_eq!(client.protocol, expected);
        assert_eq!(client.leaf, leaf_der(dir.path(), "leaf"));
        for _ in 0..2 {
            let (status, body) = client.post(w.key("crm"), viewers("acc-1", 0, 10)).await;
            assert_eq!(status, 200, "{expected}: {body}");
        }
    }
    assert_eq!(
        w.sim.calls_total(),
        1,
        "one miss, then hits on every connection"
    );
    // Plain HTTP on the TLS port is not served.
    let got = common::raw::exchange(
        server.addr(),
        b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(!got.text().contains("200"), "{}", got.text());
    server.shutdown().await;
}

#[tokio::test]
async fn the_certificate_is_swapped_without_dropping_a_request() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    make_leaf(dir.path(), "next");
    let files = install(dir.path(), "leaf", "leaf");
    let w = World::start(crm_world()).await;
    // Every miss takes 400 ms upstream, so requests are running during the swap.
    w.sim.set_fault(Fault::latency(400));
    let tls = ServerTls::load(&files).unwrap();
    let server = https_listener(&w, &tls).await;
    let ca = dir.path().join("ca.pem");
    let key = w.key("crm").to_string();

    let h2 = Https::connect(server.addr(), &ca, &[b"h2"]).await;
    assert_eq!(h2.leaf, leaf_der(dir.path(), "leaf"));
    let mut h1 = Vec::new();
    for _ in 0..3 {
        h1.push(Https::connect(server.addr(), &ca, &[b"http/1.1"]).await);
    }
    let mut running = Vec::new();
    let spawn_h2 = |account: String, running: &mut Vec<_>| {
        let mut send = h2.h2();
        let request = h2.request(&key, viewers(&account, 0, 10));
        running.push(tokio::spawn(async move {
            read(send.send_request(request).await).await
        }));
    };
    for i in 0..6 {
        spawn_h2(format!("before-{i}"), &mut running);
    }
    for (i, mut client) in h1.into_iter().enumerate() {
        let key = key.clone();
        running.push(tokio::spawn(async move {
            client.post(&key, viewers(&format!("h1-{i}"), 0, 10)).await
        }));
    }
    // Swap once the first requests have reached the upstream (are in flight).
    let deadline = Instant::now() + SOON;
    while w.sim.calls_total() == 0 {
        assert!(
            Instant::now() < deadline,
            "no request reached the simulator"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    install(dir.path(), "next", "next");
    tls.reload(&files).expect("the new pair loads");
    // During and after the swap: more streams on the old connection, and new connections.
    for i in 0..4 {
        spawn_h2(format!("after-{i}"), &mut running);
    }
    let mut fresh = Https::connect(server.addr(), &ca, &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        fresh.leaf,
        leaf_der(dir.path(), "next"),
        "a new connection gets the new certificate"
    );
    assert_ne!(fresh.leaf, h2.leaf);
    let (status, body) = fresh.post(&key, viewers("fresh", 0, 10)).await;
    assert_eq!(status, 200, "{body}");
    for task in running {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(w.sim.calls_total() >= 13);
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_pair_at_reload_keeps_the_certificate_in_force() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    make_leaf(dir.path(), "next");
    let files = install(dir.path(), "leaf", "leaf");
    let w = World::start(crm_world()).await;
    let tls = ServerTls::load(&files).unwrap();
    let server = https_listener(&w, &tls).await;
    let ca = dir.path().join("ca.pem");
    let old = leaf_der(dir.path(), "leaf");

    // The new certificate with the old key: refused, naming the key file.
    install(dir.path(), "next", "leaf");
    let e = tls.reload(&files).expect_err("a mismatched pair");
    assert_eq!(e.problem, PairProblem::Key);
    assert!(
        e.reason.contains("server.key") && e.reason.contains("does not match"),
        "{e}"
    );
    // A key file that is not a key, a key file that is gone, a certificate that is not one.
    std::fs::write(
        &files.key_file,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = tls.reload(&files).expect_err("garbage key");
    assert_eq!(e.problem, PairProblem::Key, "{e}");
    std::fs::remove_file(&files.key_file).unwrap();
    let e = tls.reload(&files).expect_err("no key file");
    assert!(
        e.reason.contains("cannot read") && e.reason.contains("server.key"),
        "{e}"
    );
    std::fs::write(&files.cert_file, "not a certificate\n").unwrap();
    let e = tls.reload(&files).expect_err("no certificate");
    assert_eq!(e.problem, PairProblem::Certificate, "{e}");

    let mut client = Https::connect(server.addr(), &ca, &[b"h2"]).await;
    assert_eq!(client.leaf, old, "the old certificate is still served");
    let (status, body) = client.post(w.key("crm"), viewers("acc-1", 0, 10)).await;
    assert_eq!(status, 200, "{body}");

    // Logged as errors naming the file, never quoting a key.
    let logs = common::logs();
    let failures: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("TLS certificate reload failed"))
        .collect();
    assert!(failures.len() >= 4, "{failures:?}");
    assert!(
        failures.iter().all(|l| l.contains("\"level\":\"error\"")),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|l| l.contains("server.key")),
        "{failures:?}"
    );
    assert_no_key_material(dir.path(), &logs);

    // Fixed: the next reload serves the new pair.
    install(dir.path(), "next", "next");
    tls.reload(&files).unwrap();
    let client = Https::connect(server.addr(), &ca, &[b"h2"]).await;
    assert_eq!(client.leaf, leaf_der(dir.path(), "next"));
    server.shutdown().await;
}

/// No line of any private key's PEM body appears in `text`.
fn assert_no_key_material(dir: &Path, text: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "key") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if !line.starts_with("-----") && line.len() >= 16 {
                    assert!(!text.contains(line), "a line of {} leaked", path.display());
                }
            }
        }
    }
}

#[test]
fn check_refuses_a_pair_that_cannot_be_served_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    make_leaf(dir.path(), "next");
    let yaml = |files: &TlsFiles| {
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\nupstream:\n  base_url: \"http://127.0.0.1:1\"\n  keys:\n    - name: primary\n      api_key_env: LINKUP_TEST_KEY\n",
            files.cert_file.display(),
            files.key_file.display()
        )
    };
    let load = |text: &str| {
        viewgate::config::from_yaml_with_env(text, "tls.yaml", &|_| Some("k".to_string()))
    };
    let good = install(dir.path(), "leaf", "leaf");
    let config = load(&yaml(&good)).expect("a good pair");
    assert_eq!(config.server.tls, Some(good.clone()));
    assert_eq!(config.server.idle_timeout, Duration::from_secs(75));

    install(dir.path(), "next", "leaf");
    let e = load(&yaml(&good)).expect_err("a mismatched pair");
    let text = e.to_string();
    assert!(text.starts_with("tls.yaml:5:"), "{text}");
    assert!(
        text.contains("server.tls.key_file") && text.contains("does not match"),
        "{text}"
    );
    let missing = TlsFiles {
        cert_file: dir.path().join("nowhere.pem"),
        key_file: good.key_file.clone(),
    };
    let text = load(&yaml(&missing)).expect_err("no such file").to_string();
    assert!(
        text.starts_with("tls.yaml:4:") && text.contains("server.tls.cert_file"),
        "{text}"
    );
    assert_no_key_material(dir.path(), &text);
}

/// The real binary: SIGHUP swaps the certificate, so does a change of the
/// files alone, and a bad pair is logged and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_swap_the_certificate_of_a_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    make_leaf(dir.path(), "second");
    make_leaf(dir.path(), "third");
    let files = install(dir.path(), "leaf", "leaf");
    let sim = Simulator::start(
        SimConfig::default().with_key(SimKey::new("primary", "tls-test-upstream", ["*"])),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let key_file = dir.path().join("upstream.key");
    write_private(&key_file, "tls-test-upstream");
    let tenant_key = "vg_tls-test-tenant";
    let config = dir.path().join("viewgate.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\nupstream:\n  base_url: \"{}\"\n  keys:\n    - name: primary\n      api_key_file: \"{}\"\nledger:\n  backend: memory\ntenants:\n  - id: crm\n    key_sha256: \"{}\"\n    accounts: [\"*\"]\n",
            files.cert_file.display(),
            files.key_file.display(),
            sim.base_url(),
            key_file.display(),
            KeyHash::of(tenant_key.as_bytes()).to_hex()
        ),
    )
    .unwrap();
    let (mut child, addr, lines) = common::process::serve(&config);
    let addr: SocketAddr = addr.parse().unwrap();
    let ca = dir.path().join("ca.pem");
    let mut first = Https::connect(addr, &ca, &[b"h2", b"http/1.1"]).await;
    assert_eq!(first.leaf, leaf_der(dir.path(), "leaf"));
    assert_eq!(first.post(tenant_key, viewers("acc-1", 0, 10)).await.0, 200);

    // Waits (bounded) until new connections get `name`'s certificate.
    let served = |name: &'static str| {
        let (ca, dir) = (ca.clone(), dir.path().to_path_buf());
        async move {
            let deadline = Instant::now() + SOON;
            loop {
                let mut client = Https::connect(addr, &ca, &[b"h2"]).await;
                if client.leaf == leaf_der(&dir, name) {
                    let (status, body) = client.post(tenant_key, viewers("acc-2", 0, 10)).await;
                    assert_eq!(status, 200, "{body}");
                    return;
                }
                assert!(Instant::now() < deadline, "{name} was never served");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    install(dir.path(), "second", "second");
    signal(&child.0, "HUP");
    served("second").await;
    // The connection made before the swap goes on, with its certificate.
    assert_eq!(first.post(tenant_key, viewers("acc-1", 0, 10)).await.0, 200);

    // No signal: the watcher sees the files change.
    install(dir.path(), "third", "third");
    served("third").await;

    // A bad pair: logged once, naming the file; the third pair stays.
    install(dir.path(), "second", "third");
    let deadline = Instant::now() + SOON;
    let failure = loop {
        let found = lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("TLS certificate reload failed"))
            .cloned();
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "the bad pair was never reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        failure.contains("server.key") && failure.contains("\"level\":\"error\""),
        "{failure}"
    );
    let client = Https::connect(addr, &ca, &[b"h2"]).await;
    assert_eq!(client.leaf, leaf_der(dir.path(), "third"));
    let all = lines.lock().unwrap().join("\n");
    assert_no_key_material(dir.path(), &all);

    // `viewgate check` refuses the same files, naming the key and its line.
    let check = Command::new(env!("CARGO_BIN_EXE_viewgate"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains(":5:") && stderr.contains("server.tls.key_file"),
        "{stderr}"
    );
    assert!(child.0.try_wait().unwrap().is_none(), "still serving");
}
