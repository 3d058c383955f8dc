//! `http://` and `https://` words (issue 11): a file from the web, into the
//! files directory at the URL's path, so the mesh serves it after.
//!
//! The download streams into a partial file and is renamed into place
//! only whole (the body as long as Content-Length said): a failure leaves
//! nothing under the name. Redirects are followed, at most
//! [`MAX_REDIRECTS`]. TLS trusts the webpki roots, and the operator's own
//! CA file if named (`mm serve --ca-file`). One download per URL at a time
//! on this node; the mesh decides which node downloads (see `resolve`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::io::AsyncWriteExt;

use crate::{Error, Result};

pub(crate) const MAX_REDIRECTS: usize = 5;
/// A server that sends nothing for this long has hung.
const IDLE: Duration = Duration::from_secs(30);

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

pub(crate) struct Web {
    client: Client<Https, Empty<Bytes>>,
    /// One lock per URL being downloaded here.
    inflight: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn web_err(url: &str, why: impl std::fmt::Display) -> Error {
    Error::Refused(format!("{url}: {why}"))
}

impl Web {
    /// A client trusting the webpki roots and, if given, the CA
    /// certificates of `ca_file` (PEM).
    pub(crate) fn new(ca_file: Option<&Path>) -> Result<Web> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(f) = ca_file {
            let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(f)
                .map_err(|e| Error::Startup(format!("--ca-file {}: {e}", f.display())))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::Startup(format!("--ca-file {}: {e}", f.display())))?;
            if certs.is_empty() {
                return Err(Error::Startup(format!(
                    "--ca-file {}: no certificate in it",
                    f.display()
                )));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| Error::Startup(format!("--ca-file {}: {e}", f.display())))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Startup(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(Web {
            client,
            inflight: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Held while `url` is downloaded here: a second asker waits, then
    /// finds the file in place.
    pub(crate) async fn lock(&self, url: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, m| Arc::strong_count(m) > 1 || m.try_lock().is_err());
            map.entry(url.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Streams `url` into `out`; returns the bytes written. Follows
    /// redirects; a status other than 2xx, a body shorter (or longer) than
    /// its Content-Length, or a server that stalls is an error.
    pub(crate) async fn download(&self, url: &str, out: &mut tokio::fs::File) -> Result<u64> {
        let mut at: hyper::Uri = url
            .parse()
            .map_err(|e| web_err(url, format!("not a URL: {e}")))?;
        for _ in 0..=MAX_REDIRECTS {
            let req = hyper::Request::get(at.clone())
                .header(
                    hyper::header::USER_AGENT,
                    concat!("mm/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::<Bytes>::new())
                .map_err(|e| web_err(url, e))?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| web_err(url, describe(&e)))?;
            let status = resp.status();
            if status.is_redirection() {
                let loc = resp
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| web_err(url, format!("{status} with no Location")))?;
                at = join(&at, loc).map_err(|e| web_err(url, e))?;
                continue;
            }
            if !status.is_success() {
                return Err(web_err(url, format!("the server answered {status}")));
            }
            let want = resp
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let mut body = resp.into_body();
            let mut got = 0u64;
            loop {
                let frame = match tokio::time::timeout(IDLE, body.frame()).await {
                    Err(_) => return Err(web_err(url, format!("no data for {IDLE:?}"))),
                    Ok(None) => break,
                    Ok(Some(f)) => f.map_err(|e| {
                        let why = describe(&e);
                        match want {
                            Some(w) => web_err(
                                url,
                                format!("the body ended after {got} of {w} bytes ({why})"),
                            ),
                            None => {
                                web_err(url, format!("the body broke off after {got} bytes: {why}"))
                            }
                        }
                    })?,
                };
                if let Ok(data) = frame.into_data() {
                    got += data.len() as u64;
                    if want.is_some_and(|w| got > w) {
                        return Err(web_err(url, "the body is longer than its Content-Length"));
                    }
                    out.write_all(&data)
                        .await
                        .map_err(|e| Error::io("writing the download", e))?;
                }
            }
            if let Some(w) = want {
                if got != w {
                    return Err(web_err(
                        url,
                        format!("the body ended after {got} of {w} bytes"),
                    ));
                }
            }
            out.sync_all()
                .await
                .map_err(|e| Error::io("syncing the download", e))?;
            return Ok(got);
        }
        Err(web_err(url, format!("more than {MAX_REDIRECTS} redirects")))
    }
}

/// An error with its causes: hyper's own message is only the outermost
/// ("client error (Connect)"), the reason is beneath.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// A Location, absolute or relative to `base`.
fn join(base: &hyper::Uri, loc: &str) -> std::result::Result<hyper::Uri, String> {
    if loc.contains("://") {
        return loc
            .parse()
            .map_err(|e| format!("a bad Location {loc}: {e}"));
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let auth = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = if loc.starts_with('/') {
        loc.to_string()
    } else {
        let p = base.path();
        format!("{}{loc}", &p[..p.rfind('/').map_or(0, |i| i + 1)])
    };
    format!("{scheme}://{auth}{path}")
        .parse()
        .map_err(|e| format!("a bad Location {loc}: {e}"))
}

/// The files directory's name for `url`: its path, without the query.
pub(crate) fn name_of(url: &str) -> Result<String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| web_err(url, format!("not a URL: {e}")))?;
    let path = uri.path().trim_start_matches('/');
    if path.is_empty() || path.ends_with('/') {
        return Err(web_err(url, "names no file (its path ends in /)"));
    }
    Ok(mm_store::FilesDir::clean(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_files_and_locations_join() {
        assert_eq!(
            name_of("http://h:8000/images/a.qcow2?x=1").unwrap(),
            "images/a.qcow2"
        );
        assert!(name_of("http://h/").is_err());
        assert!(name_of("http://h/a/../../etc/passwd").is_err());
        let b: hyper::Uri = "http://h:1/a/b/c".parse().unwrap();
        assert_eq!(join(&b, "/x").unwrap().to_string(), "http://h:1/x");
        assert_eq!(join(&b, "d").unwrap().to_string(), "http://h:1/a/b/d");
        assert_eq!(join(&b, "https://o/y").unwrap().to_string(), "https://o/y");
    }
}
