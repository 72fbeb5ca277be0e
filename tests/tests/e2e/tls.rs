//! TLS to PostgreSQL: against a server that refuses unencrypted TCP, weir streams with
//! `sslmode=verify-full` and the test authority's certificate, and refuses a server whose
//! certificate it cannot verify.

use crate::harness::{read_changelog, stderr, weir_bin};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::process::{Output, Stdio};
use weir::pgtemp::TempPostgres;

/// A certificate authority: its certificate (PEM) and the issuer that signs with it.
fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

#[test]
fn weir_streams_over_verified_tls_and_refuses_an_unknown_certificate() {
    let ca = authority("weir test authority");
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let pg = TempPostgres::start().unwrap();
    pg.enable_ssl(&server_cert.pem(), &server_key.serialize_pem())
        .unwrap();
    // Unencrypted TCP is refused, for SQL and replication alike.
    pg.prepend_hba(
        "hostnossl all all 127.0.0.1/32 reject\nhostnossl replication all 127.0.0.1/32 reject",
    )
    .unwrap();
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    pg.psql(
        "app",
        "INSERT INTO t SELECT g, 'before' FROM generate_series(1, 10) g",
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let stranger_file = dir.path().join("stranger.pem");
    std::fs::write(&stranger_file, authority("someone else").pem()).unwrap();
    let out = dir.path().join("out");
    let run = |query: &str| -> Output {
        let config = dir.path().join("pipeline.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = \"postgres://postgres@localhost:{}/app{query}\"\ntables = [\"public.t\"]\n\n\
                 [[sink]]\ntype = \"parquet\"\nurl = \"file://{}\"\n",
                pg.port(),
                out.display()
            ),
        )
        .unwrap();
        std::process::Command::new(weir_bin())
            .args(["run", config.to_str().unwrap(), "--until-caught-up"])
            .env("WEIR_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    let plain = run("?sslmode=disable");
    assert!(!plain.status.success());
    assert!(
        stderr(&plain).contains("no encryption"),
        "the server refuses plain TCP: {}",
        stderr(&plain)
    );
    let unknown = run(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        stranger_file.display()
    ));
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("invalid peer certificate: UnknownIssuer"),
        "a certificate from an unknown authority is refused: {}",
        stderr(&unknown)
    );
    assert!(
        !out.exists(),
        "nothing written before the connection is trusted"
    );

    let verified = run(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    ));
    assert!(verified.status.success(), "{}", stderr(&verified));
    pg.psql(
        "app",
        "INSERT INTO t SELECT g, 'after' FROM generate_series(11, 20) g",
    )
    .unwrap();
    // `require` encrypts without checking the certificate, as libpq's does.
    let required = run("?sslmode=require");
    assert!(required.status.success(), "{}", stderr(&required));

    // A certificate of the right authority for another host: verify-full refuses it,
    // verify-ca (the chain only) takes it.
    let elsewhere_key = KeyPair::generate().unwrap();
    let elsewhere = CertificateParams::new(vec!["db.example".to_string()])
        .unwrap()
        .signed_by(&elsewhere_key, &ca)
        .unwrap();
    pg.enable_ssl(&elsewhere.pem(), &elsewhere_key.serialize_pem())
        .unwrap();
    let mismatch = run(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    ));
    assert!(!mismatch.status.success());
    assert!(
        stderr(&mismatch).contains("certificate not valid for name \"localhost\""),
        "the host name is checked: {}",
        stderr(&mismatch)
    );
    pg.psql("app", "INSERT INTO t VALUES (21, 'chain only')")
        .unwrap();
    let chain_only = run(&format!(
        "?sslmode=verify-ca&sslrootcert={}",
        ca_file.display()
    ));
    assert!(chain_only.status.success(), "{}", stderr(&chain_only));

    let changes = read_changelog(&out.join("public").join("t"), "id");
    assert_eq!((changes.op("r"), changes.op("c")), (10, 11));
    assert_eq!(changes.duplicates, 0);
}
