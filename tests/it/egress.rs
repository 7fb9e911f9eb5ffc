//! Issue "Egress": upstreams reached through an HTTP proxy (a real
//! tinyproxy on loopback) and over TLS with a certificate from a private CA.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use crate::common::gateway::{body, header, temp_dir, TempDir};
use crate::common::process::free_port;
use crate::common::{Gateway, Upstream};
use crate::{model, prelude, tier, ENV};

/// A CA made for the test, and a certificate it signed for localhost.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Cascade test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

/// tinyproxy on a free loopback port, logging every request it relays.
struct Tinyproxy {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tinyproxy {
    /// `auth`: a user and password the proxy requires.
    fn start(auth: Option<(&str, &str)>) -> Tinyproxy {
        let bin = [
            "/usr/bin/tinyproxy",
            "/usr/sbin/tinyproxy",
            "/usr/local/bin/tinyproxy",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "tinyproxy is not installed (scripts/test.sh installs it: apt-get install tinyproxy)",
        );
        let dir = temp_dir();
        let port = free_port();
        let log = dir.0.join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\nMaxClients 64\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
            log.display()
        );
        if let Some((user, pass)) = auth {
            conf.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        let conf_path = dir.0.join("tinyproxy.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .args(["-d", "-c"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Tinyproxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Requests it relayed to `port` (plain or CONNECT).
    fn relayed(&self, port: u16) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("Request (file descriptor") && l.contains(&format!(":{port}")))
            .count()
    }
}

fn port_of(up: &Upstream) -> u16 {
    up.base_url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/v1")
        .parse()
        .unwrap()
}

/// The scripted upstream as provider `up` with these extra provider lines.
fn config(up: &Upstream, provider_extra: &str) -> String {
    [
        prelude(up, "default_max_retries = 0").replace(
            "[providers.up]\n",
            &format!("[providers.up]\n{provider_extra}\n"),
        ),
        model("m", ""),
        tier("t", &["m"], ""),
    ]
    .concat()
}

async fn ask(gw: &Gateway) -> reqwest::Response {
    gw.chat().json(&body("t")).send().await.unwrap()
}

#[tokio::test]
async fn a_private_ca_is_trusted_through_ca_file_only() {
    let pki = pki();
    let up = Upstream::start_tls(pki.chain.clone(), pki.key.clone_key()).await;
    let dir = temp_dir();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();

    let gw = Gateway::start(
        &config(&up, &format!("ca_file = \"{}\"", ca.display())),
        ENV,
    )
    .await;
    let resp = ask(&gw).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.count("m"), 1);

    // without it: a connect error that names the certificate problem
    let gw = Gateway::start(&config(&up, ""), ENV).await;
    let resp = ask(&gw).await;
    assert_eq!(resp.status(), 502);
    let b: Value = resp.json().await.unwrap();
    let error = b["error"]["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(error.contains("certificate"), "{b}");
    assert_eq!(
        gw.metric(r#"cascade_attempts_total{model="m",outcome="connect_error",tier="t"}"#)
            .await,
        1.0
    );
    assert_eq!(
        up.count("m"),
        1,
        "the untrusted upstream never got a request"
    );
}

#[tokio::test]
async fn a_proxy_carries_plain_and_tls_traffic_unless_bypassed() {
    let proxy = Tinyproxy::start(None);
    let up = Upstream::start().await;
    let port = port_of(&up);

    // the provider's own proxy: absolute-form requests through it
    let gw = Gateway::start(&config(&up, &format!("proxy = \"{}\"", proxy.url)), ENV).await;
    assert_eq!(ask(&gw).await.status(), 200);
    assert_eq!(proxy.relayed(port), 1, "{}", proxy.log());

    // from the environment, as a deployment sets it
    let mut env = ENV.to_vec();
    env.push(("HTTP_PROXY", proxy.url.as_str()));
    let gw = Gateway::start(&config(&up, ""), &env).await;
    assert_eq!(ask(&gw).await.status(), 200);
    assert_eq!(proxy.relayed(port), 2);

    // proxy = "none", and NO_PROXY, go direct
    let gw = Gateway::start(&config(&up, "proxy = \"none\""), &env).await;
    assert_eq!(ask(&gw).await.status(), 200);
    env.push(("NO_PROXY", "localhost,127.0.0.1"));
    let gw = Gateway::start(&config(&up, ""), &env).await;
    assert_eq!(ask(&gw).await.status(), 200);
    assert_eq!(
        proxy.relayed(port),
        2,
        "bypassed requests went through the proxy"
    );
    assert_eq!(up.count("m"), 4);

    // TLS through a CONNECT tunnel, the private CA trusted
    let pki = pki();
    let tls = Upstream::start_tls(pki.chain.clone(), pki.key.clone_key()).await;
    let dir = temp_dir();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let extra = format!("proxy = \"{}\"\nca_file = \"{}\"", proxy.url, ca.display());
    let gw = Gateway::start(&config(&tls, &extra), ENV).await;
    assert_eq!(ask(&gw).await.status(), 200);
    let tls_port = port_of(&tls);
    assert!(
        proxy
            .log()
            .contains(&format!("CONNECT localhost:{tls_port}")),
        "{}",
        proxy.log()
    );
    assert_eq!(tls.count("m"), 1);
}

#[tokio::test]
async fn proxy_credentials_are_sent_and_never_shown() {
    let proxy = Tinyproxy::start(Some(("cascade", "pr0xy-s3cret")));
    let up = Upstream::start().await;
    let port = port_of(&up);
    let with = |creds: &str| {
        config(
            &up,
            &format!(
                "proxy = \"http://{creds}@{}\"",
                proxy.url.trim_start_matches("http://")
            ),
        )
    };
    let gw = Gateway::start(&with("cascade:pr0xy-s3cret"), ENV).await;
    let resp = ask(&gw).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-cascade-tier"), "t");
    assert_eq!(proxy.relayed(port), 1);
    // the upstream never sees the proxy's credentials
    let seen = &up.requests()[0].headers;
    assert!(seen.get("proxy-authorization").is_none());
    // credentials in the environment's proxy URL are sent too
    let mut env = ENV.to_vec();
    let from_env = format!(
        "http://cascade:pr0xy-s3cret@{}",
        proxy.url.trim_start_matches("http://")
    );
    env.push(("HTTP_PROXY", from_env.as_str()));
    let gw = Gateway::start(&config(&up, ""), &env).await;
    assert_eq!(ask(&gw).await.status(), 200);
    assert_eq!(proxy.relayed(port), 2);

    // wrong credentials: the proxy refuses, the attempt fails, and neither
    // the password given nor the right one shows anywhere
    let gw = Gateway::start(&with("cascade:wrong-pass"), ENV).await;
    let resp = ask(&gw).await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    // tinyproxy answers a plain request 401 (a CONNECT, 407)
    let b: Value = serde_json::from_str(&text).unwrap();
    let status = b["error"]["attempts"][0]["status"].as_u64().unwrap();
    assert!(status == 401 || status == 407, "{text}");
    for secret in ["pr0xy-s3cret", "wrong-pass"] {
        assert!(!text.contains(secret), "{text}");
        assert!(!gw.metrics().await.contains(secret));
    }
    let status = gw.get_json("/v1/cascade/status").await.to_string();
    assert!(!status.contains("wrong-pass"), "{status}");
}
