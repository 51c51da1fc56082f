//! The feedback port's certificate when the operator makes it
//! (`--feedback-tls-secret`), against the fake API server: made when missing
//! (by one of two replicas racing), handed to the agents as a CA, renewed
//! before it expires and served without a restart, and a corrupt Secret
//! refused with the key and the fix.

mod operator_harness;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailfleet::operator::feedback_cert::{
    names_for_host, CertPolicy, SecretRef, CA_CERT_KEY, TLS_CERT_KEY, TLS_KEY_KEY,
};
use mailfleet::operator::feedback_cert_keeper::{issue_ca, issue_serving, secret_data, ManagedTls};
use mailfleet::operator::run::{start, RunError};
use operator_harness::*;
use serde_json::{json, Value};
use support::fake_api::FakeApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPERATOR_NS: &str = "mailfleet-system";
const SECRET: &str = "mailfleet-feedback-tls";

fn managed(recheck: Duration) -> ManagedTls {
    ManagedTls {
        secret: SecretRef {
            namespace: OPERATOR_NS.into(),
            name: SECRET.into(),
        },
        // The test connects as "localhost": the Service name part of the names.
        names: names_for_host("localhost", OPERATOR_NS),
        policy: CertPolicy::default(),
        recheck,
    }
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn stored_secret(api: &FakeApi) -> Option<Value> {
    api.get("v1", "Secret", OPERATOR_NS, SECRET)
}

fn secret_text(secret: &Value, key: &str) -> String {
    use base64::Engine;
    let encoded = secret["data"][key].as_str().unwrap_or_default();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

fn serial_of(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .unwrap()
        .1
        .raw_serial_as_string()
}

/// Connects to the port trusting only `ca_pem` as "localhost", asks for
/// /healthz, and returns the served certificate's serial and the answer's
/// first line.
async fn tls_get(addr: SocketAddr, ca_pem: &str) -> Result<(String, String), String> {
    let (serial, answer) = tls_fetch(addr, ca_pem, "/healthz").await?;
    Ok((
        serial,
        answer.lines().next().unwrap_or_default().to_string(),
    ))
}

/// The served certificate's serial and the whole answer for `path`.
async fn tls_fetch(addr: SocketAddr, ca_pem: &str, path: &str) -> Result<(String, String), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let serial = serial_of(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref());
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok((serial, answer))
}

fn agent_ca(api: &FakeApi, deployment: &str) -> Option<String> {
    let deployment = api.get("apps/v1", "Deployment", NS, deployment)?;
    let agent = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "mailfleet-agent")?
        .clone();
    agent["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == "MAILFLEET_FEEDBACK_CA")
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

async fn operator_with(api: &FakeApi, recheck: Duration) -> mailfleet::operator::run::Operator {
    let mut options = options();
    options.managed_tls = Some(managed(recheck));
    options.settings.agent_image = Some("registry.example.net/mailfleet:1".into());
    options.settings.feedback_url = "https://localhost:8080/v1/feedback".into();
    start_operator(api, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_one_is_made_and_its_ca_goes_to_the_agents() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 2);
    assert!(stored_secret(&api).is_none());
    let operator = operator_with(&api, Duration::from_secs(60)).await;

    let secret = stored_secret(&api).expect("the operator made the Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    for key in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(
            secret_text(&secret, key).starts_with("-----BEGIN "),
            "{key}"
        );
    }
    let ca = secret_text(&secret, CA_CERT_KEY);
    converge(&api, "a sender Deployment with the agent", |api| {
        agent_ca(api, "mf-bulk-203-0-113-10").is_some()
    })
    .await;
    assert_eq!(agent_ca(&api, "mf-bulk-203-0-113-10").unwrap(), ca);

    // Served, chained to that CA, as the Secret's tls.crt.
    let (serial, status) = tls_get(operator.local_addr(), &ca).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    let stored_leaf = secret_text(&secret, TLS_CERT_KEY);
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(stored_leaf.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    assert_eq!(serial, serial_of(&der));
    // Plain HTTP on the port is answered 400, saying why, and counted.
    let mut plain = tokio::net::TcpStream::connect(operator.local_addr())
        .await
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("this port speaks TLS: use https://"),
        "{answer}"
    );
    let (_, metrics) = tls_fetch(operator.local_addr(), &ca, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("mailfleet_http_plain_requests_refused_total 1"),
        "{metrics}"
    );
    // A client trusting another CA gets no handshake.
    let stranger = issue_ca(&CertPolicy::default(), unix_now()).unwrap();
    assert!(tls_get(operator.local_addr(), &stranger.cert_pem)
        .await
        .is_err());
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_at_once_serve_one_ca() {
    let api = FakeApi::start().await;
    let (first, second) = tokio::join!(
        mailfleet::operator::feedback_cert_keeper::start(
            api.client(),
            managed(Duration::from_secs(60))
        ),
        mailfleet::operator::feedback_cert_keeper::start(
            api.client(),
            managed(Duration::from_secs(60))
        ),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.ca_pem, second.ca_pem);
    assert_eq!(
        secret_text(&stored_secret(&api).unwrap(), CA_CERT_KEY),
        first.ca_pem
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_near_its_renewal_is_renewed_and_served_without_a_restart() {
    let api = FakeApi::start().await;
    seed_fleet(&api, 2);
    // A serving certificate whose renewal point (2/3 of its life, counted
    // from its backdated start) is six seconds away (time for a slow start).
    let now = unix_now();
    let policy = CertPolicy::default();
    let ca = issue_ca(&policy, now).unwrap();
    let short = CertPolicy {
        serving_lifetime: 160,
        ..policy.clone()
    };
    let serving = issue_serving(&ca, &managed(Duration::ZERO).names, &short, now).unwrap();
    let data: serde_json::Map<String, Value> = secret_data(&ca, &serving)
        .into_iter()
        .map(|(k, v)| (k, serde_json::to_value(v).unwrap()))
        .collect();
    api.insert(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": OPERATOR_NS},
        "type": "kubernetes.io/tls",
        "data": data,
    }));
    let operator = operator_with(&api, Duration::from_millis(200)).await;
    let (before, _) = tls_get(operator.local_addr(), &ca.cert_pem).await.unwrap();
    converge(&api, "the deployment with the agent", |api| {
        agent_ca(api, "mf-bulk-203-0-113-10").is_some()
    })
    .await;
    let template_before = api
        .get("apps/v1", "Deployment", NS, "mf-bulk-203-0-113-10")
        .unwrap()["spec"]["template"]
        .clone();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let after = loop {
        let (serial, status) = tls_get(operator.local_addr(), &ca.cert_pem).await.unwrap();
        if serial != before {
            assert_eq!(status, "HTTP/1.1 200 OK");
            break serial;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the certificate was not renewed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The Secret holds the renewed certificate, the same CA, and a 90-day life.
    let secret = stored_secret(&api).unwrap();
    assert_eq!(secret_text(&secret, CA_CERT_KEY), ca.cert_pem);
    assert_ne!(secret_text(&secret, TLS_KEY_KEY), serving.key_pem);
    let pair = mailfleet::operator::feedback_cert::read_pair(
        &managed(Duration::ZERO).secret,
        &serde_json::from_value(secret["data"].clone()).unwrap(),
    )
    .unwrap();
    assert_eq!(pair.serial, after);
    assert!(pair.not_after - unix_now() > 89 * 24 * 3600);
    // No pod template changed: the agents trust the same CA.
    assert_eq!(
        api.get("apps/v1", "Deployment", NS, "mf-bulk-203-0-113-10")
            .unwrap()["spec"]["template"],
        template_before
    );
    // The expiry metric follows the served certificate.
    let (_, metrics) = tls_fetch(operator.local_addr(), &ca.cert_pem, "/metrics")
        .await
        .unwrap();
    let expected = format!(
        "mailfleet_feedback_certificate_expiry_timestamp_seconds {}",
        pair.not_after
    );
    assert!(metrics.contains(&expected), "{metrics}");
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_secret_stops_the_start_naming_the_key_and_the_fix() {
    let api = FakeApi::start().await;
    let now = unix_now();
    let policy = CertPolicy::default();
    let ca = issue_ca(&policy, now).unwrap();
    let serving = issue_serving(&ca, &managed(Duration::ZERO).names, &policy, now).unwrap();
    let other = issue_serving(&ca, &managed(Duration::ZERO).names, &policy, now).unwrap();
    let mut data: serde_json::Map<String, Value> = secret_data(&ca, &serving)
        .into_iter()
        .map(|(k, v)| (k, serde_json::to_value(v).unwrap()))
        .collect();
    // The key of another certificate.
    data.insert(
        TLS_KEY_KEY.into(),
        serde_json::to_value(k8s_openapi::ByteString(other.key_pem.into_bytes())).unwrap(),
    );
    api.insert(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": OPERATOR_NS},
        "type": "kubernetes.io/tls",
        "data": data,
    }));
    let mut options = options();
    options.managed_tls = Some(managed(Duration::from_secs(60)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match start(api.client(), options, listener, None).await {
        Err(err) => err,
        Ok(_) => panic!("an operator started with a corrupt Secret"),
    };
    assert!(matches!(err, RunError::FeedbackCert(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Secret mailfleet-system/mailfleet-feedback-tls key tls.key"),
        "{text}"
    );
    assert!(text.contains("does not go with tls.crt"), "{text}");
    assert!(
        text.contains("kubectl -n mailfleet-system delete secret mailfleet-feedback-tls"),
        "{text}"
    );
    // Nothing was overwritten.
    let stored = stored_secret(&api).unwrap();
    assert_eq!(secret_text(&stored, TLS_CERT_KEY), serving.cert_pem);
}

/// A Secret whose serving certificate is past its renewal point.
fn seed_due_secret(api: &FakeApi) -> (mailfleet::operator::feedback_cert_keeper::IssuedCa, String) {
    let now = unix_now();
    let policy = CertPolicy::default();
    let ca = issue_ca(&policy, now).unwrap();
    let short = CertPolicy {
        serving_lifetime: 10,
        ..policy
    };
    let serving = issue_serving(&ca, &managed(Duration::ZERO).names, &short, now).unwrap();
    let data: serde_json::Map<String, Value> = secret_data(&ca, &serving)
        .into_iter()
        .map(|(k, v)| (k, serde_json::to_value(v).unwrap()))
        .collect();
    api.insert(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": OPERATOR_NS},
        "type": "kubernetes.io/tls",
        "data": data,
    }));
    (ca, serving.cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_loses_a_race_reads_the_secret_again_and_keeps_the_ca() {
    let api = FakeApi::start().await;
    let (ca, due_cert) = seed_due_secret(&api);
    // The other replica's renewal came first: this replica's replace is refused once.
    api.fail_next("PUT", SECRET, 409, 1);
    api.clear_requests();
    let serving = mailfleet::operator::feedback_cert_keeper::start(
        api.client(),
        managed(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert_eq!(serving.ca_pem, ca.cert_pem);
    let secret = stored_secret(&api).unwrap();
    assert_ne!(secret_text(&secret, TLS_CERT_KEY), due_cert, "not renewed");
    assert_eq!(secret_text(&secret, CA_CERT_KEY), ca.cert_pem);
    let puts: Vec<u16> = api
        .requests()
        .iter()
        .filter(|w| w.method == "PUT" && w.path.contains(SECRET))
        .map(|w| w.status)
        .collect();
    assert_eq!(
        puts,
        [409, 200],
        "one refused replace, one after reading again"
    );
}
