//! Redirect rules: which responses are followed, where to, and with what method and body.
//!
//! Pure functions; the probe loop applies them hop by hop and enforces the loop and count limits.

use http::{HeaderValue, Method};
use url::Url;

/// Statuses that are followed when they carry a `Location`.
pub(crate) fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// The method of the next hop and whether the request body goes with it: 303 turns anything
/// but HEAD into a body-less GET, 301/302 do so for POST (what browsers do), 307/308 keep both.
pub(crate) fn next_method(status: u16, method: &Method) -> (Method, bool) {
    match status {
        303 if method != Method::HEAD => (Method::GET, false),
        301 | 302 if method == Method::POST => (Method::GET, false),
        _ => (method.clone(), true),
    }
}

/// Resolves a `Location` against the URL that answered. The fragment is dropped (it is never
/// sent and would make loop detection miss repeats).
pub(crate) fn resolve_location(current: &Url, location: &HeaderValue) -> Result<Url, &'static str> {
    let text = std::str::from_utf8(location.as_bytes()).map_err(|_| "not UTF-8")?;
    let mut next = current.join(text.trim()).map_err(|_| "not a valid URL")?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err("only http and https are followed");
    }
    if next.host_str().is_none_or(str::is_empty) {
        return Err("no host");
    }
    next.set_fragment(None);
    // Credentials a server puts in a Location are never sent (the request carries no
    // Authorization from a URL), and would only be copied into the result's final_url.
    let _ = next.set_username("");
    let _ = next.set_password(None);
    Ok(next)
}

/// Whether two URLs share scheme, host and port. Credentials and the `Host` a site set are
/// sent only to the origin they were configured for.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_across_redirects() {
        let cases = [
            (301, Method::GET, Method::GET, true),
            (301, Method::POST, Method::GET, false),
            (302, Method::POST, Method::GET, false),
            (302, Method::PUT, Method::PUT, true),
            (303, Method::POST, Method::GET, false),
            (303, Method::PUT, Method::GET, false),
            (303, Method::HEAD, Method::HEAD, true),
            (307, Method::POST, Method::POST, true),
            (308, Method::POST, Method::POST, true),
            (308, Method::DELETE, Method::DELETE, true),
        ];
        for (status, method, want, body) in cases {
            assert_eq!(
                next_method(status, &method),
                (want, body),
                "{status} {method}"
            );
        }
    }

    #[test]
    fn locations() {
        let base = Url::parse("http://a.test:8080/dir/page?q=1").unwrap();
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("/abs", Ok("http://a.test:8080/abs")),
            ("rel", Ok("http://a.test:8080/dir/rel")),
            ("../up", Ok("http://a.test:8080/up")),
            ("?other", Ok("http://a.test:8080/dir/page?other")),
            ("//b.test/x", Ok("http://b.test/x")),
            ("https://c.test/y#frag", Ok("https://c.test/y")),
            ("http://user:pass@d.test/z", Ok("http://d.test/z")),
            ("  /spaced  ", Ok("http://a.test:8080/spaced")),
            ("ftp://d.test/", Err("only http and https are followed")),
            ("http://", Err("not a valid URL")),
        ];
        for (loc, want) in cases {
            let got = resolve_location(&base, &HeaderValue::from_str(loc).unwrap());
            assert_eq!(
                got.as_ref().map(Url::as_str),
                want.as_ref().map(|s| *s),
                "{loc}"
            );
        }
        assert!(resolve_location(&base, &HeaderValue::from_bytes(b"/\xff").unwrap()).is_err());
    }

    #[test]
    fn origins() {
        let u = |s| Url::parse(s).unwrap();
        assert!(same_origin(&u("http://a.test/x"), &u("http://a.test:80/y")));
        assert!(!same_origin(&u("http://a.test/"), &u("https://a.test/")));
        assert!(!same_origin(&u("http://a.test/"), &u("http://b.test/")));
        assert!(!same_origin(&u("http://a.test/"), &u("http://a.test:81/")));
    }
}
