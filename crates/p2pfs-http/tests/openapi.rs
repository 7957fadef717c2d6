//! The committed OpenAPI documents (`openapi/*.json` at the repository
//! root) must match what the code generates. Regenerate them with
//! `UPDATE_OPENAPI=1 cargo test -p p2pfs-http --test openapi`.

use std::path::PathBuf;

fn check(name: &str, doc: utoipa::openapi::OpenApi) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../openapi")
        .join(name);
    let mut generated = doc
        .to_pretty_json()
        .expect("serialise the OpenAPI document");
    generated.push('\n');
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date; run UPDATE_OPENAPI=1 cargo test -p p2pfs-http --test openapi",
        path.display()
    );
}

#[test]
fn tracker_openapi_is_current() {
    let doc = p2pfs_http::tracker::openapi();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    for p in [
        "/api/status",
        "/api/start",
        "/api/peers",
        "/api/ping",
        "/api/discover",
        "/api/files",
        "/api/chunks",
        "/api/chunks/{content_id}",
        "/api/events",
        "/api/exit",
    ] {
        assert!(
            paths.iter().any(|k| *k == p),
            "tracker OpenAPI lacks {p}: {paths:?}"
        );
    }
    check("tracker.json", doc);
}

#[test]
fn peer_openapi_is_current() {
    let doc = p2pfs_http::peer::openapi();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    for p in [
        "/api/status",
        "/api/connect",
        "/api/publish",
        "/api/repo",
        "/api/files",
        "/api/discover",
        "/api/delay",
        "/api/fetch",
        "/api/downloads",
        "/api/downloads/{id}",
        "/api/downloads/{id}/cancel",
        "/api/events",
        "/api/exit",
    ] {
        assert!(
            paths.iter().any(|k| *k == p),
            "peer OpenAPI lacks {p}: {paths:?}"
        );
    }
    check("peer.json", doc);
}
