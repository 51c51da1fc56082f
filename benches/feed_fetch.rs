//! A feed's download and parse: the SNDS data file, just under the client's
//! 16 MiB body limit, served chunked over HTTPS from 127.0.0.1, fetched by
//! the one HTTP client (`mailfleet::http_client`) and parsed by the SNDS
//! reader. Chunked framing over TLS is the case a hand-written client got
//! wrong (re-parsing the whole buffer after every read); this keeps the cost
//! of the path the feeds really take on record (docs/BENCHMARKS.md, "Feed
//! download").
//!
//! `cargo bench --bench feed_fetch` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailfleet::http_client::{HttpClient, TrustRoots};
use mailfleet::probe::snds::parse_data;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Under the client's 16 MiB limit, so the whole file is read.
const BODY_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;
/// The chunk size a server streaming a generated file would use.
const CHUNK: usize = 16 * 1024;

/// SNDS data rows for consecutive IPs of 10.0.0.0/8 until `BODY_BYTES`.
fn data_file() -> Vec<u8> {
    let mut out = String::with_capacity(BODY_BYTES);
    let mut n: u32 = 0;
    loop {
        let ip = 0x0a00_0000 + n;
        let row = format!(
            "{}.{}.{}.{},12/1/2026 8:00 AM,12/2/2026 7:59 AM,{},{},{},{},{}%,,,{},mx{}.example.net,bounce@example.net,\n",
            ip >> 24,
            (ip >> 16) & 255,
            (ip >> 8) & 255,
            ip & 255,
            1000 + n % 977,
            990 + n % 971,
            1200 + n % 1013,
            ["GREEN", "YELLOW", "RED"][(n % 3) as usize],
            ["< 0.1", "0.3", "2.5"][(n % 3) as usize],
            n % 7,
            n % 40,
        );
        if out.len() + row.len() > BODY_BYTES {
            break;
        }
        out.push_str(&row);
        n += 1;
    }
    out.into_bytes()
}

/// The whole chunked response, built once.
fn chunked_response(body: &[u8]) -> Vec<u8> {
    let mut out =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(CHUNK) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A TLS server on 127.0.0.1 answering every request with `response`;
/// returns its port and the CA (the self-signed certificate) to trust.
async fn serve(response: Arc<Vec<u8>>) -> (u16, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let ca = cert.pem();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let response = response.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // One request per connection: read up to the end of its head.
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(&response).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca)
}

fn feed_fetch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let body = data_file();
    let rows = body.iter().filter(|b| **b == b'\n').count();
    let response = Arc::new(chunked_response(&body));
    let (port, ca) = runtime.block_on(serve(response));
    let roots = TrustRoots::none().with_pem(ca.as_bytes()).unwrap();
    let client = HttpClient::new(&roots).unwrap();
    let url = format!("https://localhost:{port}/data.aspx?key=bench");

    let fetched = runtime.block_on(client.get(&url)).unwrap();
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body, body, "the client must read the body whole");
    let text = String::from_utf8(fetched.body).unwrap();
    assert_eq!(parse_data(&text).unwrap().rows.len(), rows);

    let mut group = c.benchmark_group("feed_fetch");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("https_chunked_16MiB", |b| {
        b.iter(|| {
            let response = runtime.block_on(client.get(&url)).unwrap();
            black_box(response.body.len())
        })
    });
    group.bench_function("parse_snds_data_16MiB", |b| {
        b.iter(|| black_box(parse_data(black_box(&text)).unwrap().rows.len()))
    });
    group.finish();
}

criterion_group!(benches, feed_fetch);
criterion_main!(benches);
