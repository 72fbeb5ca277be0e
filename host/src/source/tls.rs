//! TLS to PostgreSQL, configured the way libpq is: `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` in `source.url`. One implementation serves every connection: the replication
//! client's (pgwire-replication, on rustls) negotiates TLS on the socket, and the SQL
//! connections (tokio-postgres) speak over the stream it returns. See ADR 0008.

use pgwire_replication::{SslMode, TlsConfig};
use std::path::PathBuf;

/// The parameters weir takes out of a connection string before tokio-postgres reads it.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits the TLS parameters off `url` (a `postgres://` URL or `key=value` pairs): the
/// connection string without them, and the TLS settings they make. The default is
/// libpq's, `prefer`: TLS when the server offers it, without checking its certificate.
pub fn split(url: &str) -> Result<(String, TlsConfig), String> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let (rest, pairs): (String, Vec<(String, String)>) = if is_url {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut taken = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = url::form_urlencoded::parse(part.as_bytes())
                .next()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .unwrap_or_default();
            match TLS_KEYS.contains(&k.as_str()) {
                true => taken.push((k, v)),
                false => kept.push(part),
            }
        }
        let rest = match kept.is_empty() {
            true => base.to_string(),
            false => format!("{base}?{}", kept.join("&")),
        };
        (rest, taken)
    } else {
        let mut kept = Vec::new();
        let mut taken = Vec::new();
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some((k, v)) if TLS_KEYS.contains(&k) => {
                    taken.push((k.to_string(), v.trim_matches('\'').to_string()))
                }
                _ => kept.push(token),
            }
        }
        (kept.join(" "), taken)
    };
    let get = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let root = get("sslrootcert").map(PathBuf::from);
    let mode = match get("sslmode").as_deref() {
        None | Some("prefer") | Some("allow") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        // As libpq: `require` with a root certificate checks the chain too.
        Some("require") if root.is_some() => SslMode::VerifyCa,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => {
            return Err(format!(
                "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ));
        }
    };
    let (cert, key) = (get("sslcert"), get("sslkey"));
    if cert.is_some() != key.is_some() {
        return Err("sslcert and sslkey go together (a client certificate and its key)".into());
    }
    for path in [&root].into_iter().flatten() {
        if !path.exists() {
            return Err(format!("sslrootcert {}: no such file", path.display()));
        }
    }
    let mut tls = TlsConfig::disabled();
    tls.mode = mode;
    tls.ca_pem_path = root;
    tls.client_cert_pem_path = cert.map(PathBuf::from);
    tls.client_key_pem_path = key.map(PathBuf::from);
    Ok((rest, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_tls_parameters_out_of_a_url() {
        let (rest, tls) =
            split("postgres://u:p@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=Cargo.toml")
                .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.ca_pem_path, Some(PathBuf::from("Cargo.toml")));
    }

    #[test]
    fn defaults_to_prefer_as_libpq_does() {
        let (rest, tls) = split("postgres://db/app").unwrap();
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("postgres://db/app", SslMode::Prefer)
        );
        let (rest, tls) = split("host=db dbname=app sslmode=disable").unwrap();
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("host=db dbname=app", SslMode::Disable)
        );
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain() {
        let (_, tls) = split("postgres://db/app?sslmode=require&sslrootcert=Cargo.toml").unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert!(split("postgres://db/app?sslmode=sometimes").is_err());
        assert!(split("postgres://db/app?sslcert=a.pem").is_err());
        assert!(split("postgres://db/app?sslrootcert=/nonexistent/ca.pem").is_err());
    }
}
