//! A static hyper server: the ceiling viewgate's cache hits are compared to.
//!
//! `ceiling BODY_FILE [ADDR]` answers every request with status 200,
//! `content-type: application/json` and the bytes of BODY_FILE (bench/run
//! saves a real viewgate hit there), after reading the request body, as any
//! server handling a POST must. Same runtime shape as viewgate: tokio's
//! multi-thread runtime (worker count = CPUs the process may run on, or
//! TOKIO_WORKER_THREADS), hyper HTTP/1.1, keep-alive, TCP_NODELAY. It prints
//! `listening on ADDR` once bound (port 0 picks a free port).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let body_file = args.next().ok_or("usage: ceiling BODY_FILE [ADDR]")?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let body = Bytes::from(std::fs::read(&body_file)?);
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let body = body.clone();
                async move {
                    // Read the request as viewgate must; the content is ignored.
                    let _ = req.into_body().collect().await;
                    let mut resp = Response::new(Full::new(body));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
