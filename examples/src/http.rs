//! A plain HTTP/1.1 GET, for `cloister-node health` (a scratch image has no
//! curl) and for the tests of the management endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// GETs `path` from `addr` within `timeout`: the status code and the body,
/// or what went wrong, in words.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    match tokio::time::timeout(timeout, fetch(addr, path)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer from http://{addr}{path} within {timeout:?}"
        )),
    }
}

async fn fetch(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let url = format!("http://{addr}{path}");
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
