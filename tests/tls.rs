//! HTTPS to the upstream: a TLS terminator (rustls, a test CA made with
//! openssl) in front of the simulator, on loopback. Checks that viewgate
//! verifies the certificate, speaks HTTP/2 when offered and HTTP/1.1 when not.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{TenantSpec, World, WorldSpec, viewers};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

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

/// A CA and a leaf for 127.0.0.1, valid for two days.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
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
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
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
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
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
