//! The one HTTP client takes its proxy from the standard environment
//! (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`), as every HTTP tool does: a
//! cluster that reaches SNDS through a proxy only sets them. Its own binary:
//! the environment is the process'.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use mailfleet::http_client::{HttpClient, TrustRoots};

/// A forward proxy for plain HTTP: it gets the request in absolute form and
/// answers it itself, telling the test what it was asked.
fn proxy() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (seen, requests) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let _ = seen.send(line);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: 3\r\n\r\na,b",
            );
        }
    });
    (address, requests)
}

#[tokio::test]
async fn requests_go_through_the_proxy_of_the_environment_unless_no_proxy_says_otherwise() {
    let (address, requests) = proxy();
    std::env::set_var("HTTP_PROXY", &address);
    std::env::set_var("NO_PROXY", "direct.invalid");
    let client = HttpClient::new(&TrustRoots::system()).unwrap();

    // A name nobody resolves: only the proxy can answer it.
    let response = client
        .get("http://feed.invalid/snds/ipStatus.aspx?key=K")
        .await
        .unwrap();
    assert_eq!(
        (response.status, response.body.as_slice()),
        (200, &b"a,b"[..])
    );
    let line = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        line,
        "GET http://feed.invalid/snds/ipStatus.aspx?key=K HTTP/1.1"
    );

    // NO_PROXY sends this one directly, where the name does not resolve.
    let err = client
        .get("http://direct.invalid/snds/ipStatus.aspx?key=K")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "connect", "{err}");
    assert!(requests.try_recv().is_err(), "NO_PROXY was not obeyed");
}
