//! The `[server.tls]` listener: HTTP/1.1 and HTTP/2 by ALPN with a certificate made for the
//! test (rcgen), `X-Forwarded-Proto: https` upstream, a certificate replaced on disk served
//! after the reload, and key files that are missing or do not fit refused.

use crate::common;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{client, wait_until, Backend, Proxy, Route, TestConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// The name the certificates are made for; the client resolves it to the proxy.
const HOST: &str = "edge.test";

/// A test certificate authority that signs server certificates for [`HOST`].
struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A server certificate (PEM) with its key (PEM) and the DER the client will see.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "astron-edge test CA");
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        Pki { ca, ca_key }
    }

    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec![HOST.to_owned()])
            .expect("server params")
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("server certificate");
        Leaf {
            // The chain as a server sends it: leaf, then the issuer.
            cert_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn https_client(&self, tls_addr: SocketAddr, http1_only: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).expect("CA for client"),
            )
            .resolve(HOST, tls_addr)
            .tls_info(true)
            // Every request on a new connection, so each one sees the current certificate.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10));
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().expect("https client")
    }
}

/// Writes `text` as editors and certificate tools do: a new file renamed over the old.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

struct Setup {
    pki: Pki,
    first: Leaf,
    certs: tempfile::TempDir,
    backend: Backend,
    proxy: Proxy,
    tls_addr: SocketAddr,
}

impl Setup {
    fn cert_path(&self) -> PathBuf {
        self.certs.path().join("server.crt")
    }

    fn key_path(&self) -> PathBuf {
        self.certs.path().join("server.key")
    }

    fn url(&self, path: &str) -> String {
        format!("https://{HOST}:{}{path}", self.tls_addr.port())
    }

    /// The DER of the certificate a new connection is shown.
    async fn served_certificate(&self) -> Option<Vec<u8>> {
        let response = self
            .pki
            .https_client(self.tls_addr, true)
            .get(self.url("/"))
            .send()
            .await
            .ok()?;
        response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|info| info.peer_certificate())
            .map(<[u8]>::to_vec)
    }
}

/// `[server.tls]` as text, for a config whose positions are under test.
fn tls_table(tls_addr: SocketAddr, cert: &Path, key: &Path) -> String {
    format!(
        "[server.tls]\nlisten = [\"{tls_addr}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

async fn setup() -> Setup {
    setup_with(|config| config).await
}

/// [`setup`] with more settings in the config.
async fn setup_with(adjust: impl FnOnce(TestConfig) -> TestConfig) -> Setup {
    let pki = Pki::new();
    let first = pki.leaf();
    let certs = tempfile::tempdir().expect("cert dir");
    let (cert, key) = (
        certs.path().join("server.crt"),
        certs.path().join("server.key"),
    );
    std::fs::write(&cert, &first.cert_pem).expect("write cert");
    std::fs::write(&key, &first.key_pem).expect("write key");
    let backend = Backend::echo().await;
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let proxy = Proxy::with(&adjust(
        TestConfig::new()
            .tls(tls_addr, &cert, &key)
            .upstream("app", [backend.addr])
            .route(Route::prefix("app", "/").to("app")),
    ));
    Setup {
        pki,
        first,
        certs,
        backend,
        proxy,
        tls_addr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_over_http1_and_http2_forwards_proto_https() {
    let s = setup().await;
    for (http1_only, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let response = s
            .pki
            .https_client(s.tls_addr, http1_only)
            .get(s.url("/hello?x=1"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTPS request ({version:?}): {e}"));
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), "path=/hello?x=1");
        let seen = s.backend.last();
        assert_eq!(
            seen.header("x-forwarded-proto"),
            Some("https"),
            "{version:?}"
        );
        assert_eq!(seen.header("host"), Some(HOST), "{version:?}");
    }
    // The plain listener next to it still says http.
    let response = client()
        .get(s.proxy.url("/plain"))
        .send()
        .await
        .expect("http");
    assert_eq!(response.status(), 200);
    assert_eq!(s.backend.last().header("x-forwarded-proto"), Some("http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_replaced_on_disk_is_served_after_the_reload() {
    let s = setup().await;
    assert_eq!(s.served_certificate().await, Some(s.first.der.clone()));

    // A renewal: new key and certificate renamed into place; the watcher reloads.
    let renewed = s.pki.leaf();
    let written = Instant::now();
    replace(&s.key_path(), &renewed.key_pem);
    replace(&s.cert_path(), &renewed.cert_pem);
    let mut served = None;
    while written.elapsed() < Duration::from_secs(2) {
        served = s.served_certificate().await;
        if served.as_deref() == Some(renewed.der.as_slice()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        served.as_deref(),
        Some(renewed.der.as_slice()),
        "the renewed certificate is not served within 2 s:\n{}",
        s.proxy.stderr()
    );

    // SIGHUP re-reads them too: written through hard links in another directory, the
    // change raises no event where the watcher looks, so only the signal brings it in.
    let again = s.pki.leaf();
    let elsewhere = tempfile::tempdir().expect("tempdir");
    for (file, text) in [
        (s.key_path(), &again.key_pem),
        (s.cert_path(), &again.cert_pem),
    ] {
        let link = elsewhere.path().join(file.file_name().expect("file name"));
        std::fs::hard_link(&file, &link).expect("hard link");
        std::fs::write(&link, text).expect("write through the link");
    }
    s.proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut served = None;
    while Instant::now() < deadline {
        served = s.served_certificate().await;
        if served.as_deref() == Some(again.der.as_slice()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        served.as_deref(),
        Some(again.der.as_slice()),
        "not served after SIGHUP:\n{}",
        s.proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_of_another_certificate_is_refused_and_the_running_one_stays() {
    let s = setup().await;
    let other = s.pki.leaf();
    replace(&s.key_path(), &other.key_pem);
    // The line of `key = "` in the config as the harness wrote it; its value starts at column 7.
    let config = std::fs::read_to_string(&s.proxy.config_path).expect("config");
    let key_line = config
        .lines()
        .position(|l| l.starts_with("key = "))
        .expect("a key line")
        + 1;
    let key_position = format!("{}:{key_line}:7: ", s.proxy.config_path.display());
    assert!(
        wait_until(Duration::from_secs(2), || s
            .proxy
            .stderr()
            .contains(&key_position))
        .await,
        "no error at the key's position ({key_position}):\n{}",
        s.proxy.stderr()
    );
    assert!(
        s.proxy.stderr().contains("does not fit"),
        "{}",
        s.proxy.stderr()
    );
    assert_eq!(s.served_certificate().await, Some(s.first.der.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_file_is_a_config_error() {
    let pki = Pki::new();
    let leaf = pki.leaf();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("server.crt");
    std::fs::write(&cert, &leaf.cert_pem).expect("cert");
    let key = dir.path().join("missing.key");
    let port = common::free_port();
    let config_path = dir.path().join("edge.toml");
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    std::fs::write(
        &config_path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n{}",
            tls_table(tls_addr, &cert, &key)
        ),
    )
    .expect("config");
    let expected = format!(
        "{}:6:7: private key {}",
        config_path.display(),
        key.display()
    );

    let check = Command::new(common::binary())
        .arg("check")
        .arg("-c")
        .arg(&config_path)
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&expected),
        "expected {expected}…, got {stderr}"
    );

    // `run` refuses to start with the same message and never listens.
    let run = Command::new(common::binary())
        .arg("run")
        .arg("-c")
        .arg(&config_path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&expected),
        "expected {expected}, got {stderr}"
    );
}

/// `server.client_header_max_size` bounds an HTTP/2 request's decoded header list too
/// (Pingora's own limit is 64 KiB): a larger one is refused, a smaller one served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_headers_are_bounded_by_client_header_max_size() {
    let s = setup_with(|config| config.set("server.client_header_max_size", "8k")).await;
    let h2 = s.pki.https_client(s.tls_addr, false);
    let url = s.url("/h");
    let small = h2
        .get(&url)
        .header("x-pad", "a".repeat(4 * 1024))
        .send()
        .await
        .expect("4 KiB header over HTTP/2");
    assert_eq!(small.version(), reqwest::Version::HTTP_2);
    assert_eq!(small.status(), 200);
    let large = h2
        .get(&url)
        .header("x-pad", "a".repeat(16 * 1024))
        .send()
        .await;
    match large {
        Ok(response) => assert_eq!(response.status(), 431, "{}", s.proxy.stderr()),
        Err(e) => assert!(!e.is_timeout(), "refused, not left hanging: {e}"),
    }
    assert_eq!(
        s.backend.count(),
        1,
        "the refused request reached the upstream"
    );
}
