//! The `weir-sdk` crate and the WIT this binary was built with, carried inside it, so
//! that `weir plugin new` scaffolds a crate that builds anywhere, with the binary alone
//! and no checkout of weir: until `weir-sdk` is published, the scaffold depends on this
//! copy, written once into a versioned cache directory.

use anyhow::Context;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The plugin contract, `weir:plugin@0.1.0` (`weir plugin wit` prints it).
pub const WIT: &str = include_str!("../../../wit/weir-plugin.wit");

/// The SDK's manifest outside weir's workspace: the workspace's versions written out.
/// A unit test keeps it equal to `sdk/Cargo.toml` with the workspace's dependencies.
const SDK_MANIFEST: &str = concat!(
    "# weir-sdk as carried by the weir binary (`weir plugin new` writes it here).\n",
    "[package]\nname = \"weir-sdk\"\nversion = \"",
    env!("CARGO_PKG_VERSION"),
    "\"\nedition = \"2024\"\nlicense = \"Apache-2.0\"\npublish = false\n\n",
    "[features]\nguest = [\"dep:wit-bindgen\"]\n\n",
    "[dependencies]\n",
    "serde = { version = \"1\", features = [\"derive\"] }\n",
    "serde_json = \"1\"\n",
    "rmp-serde = \"1.3\"\n",
    "wit-bindgen = { version = \"0.61\", optional = true }\n"
);

/// Each file, by its path under the cache directory. The SDK finds the WIT at `../wit`
/// from its crate, as in weir's own tree.
const FILES: &[(&str, &str)] = &[
    ("weir-sdk/Cargo.toml", SDK_MANIFEST),
    (
        "weir-sdk/src/lib.rs",
        include_str!("../../../sdk/src/lib.rs"),
    ),
    (
        "weir-sdk/src/codec.rs",
        include_str!("../../../sdk/src/codec.rs"),
    ),
    (
        "weir-sdk/src/guest.rs",
        include_str!("../../../sdk/src/guest.rs"),
    ),
    (
        "weir-sdk/src/json.rs",
        include_str!("../../../sdk/src/json.rs"),
    ),
    ("weir-sdk/src/pg.rs", include_str!("../../../sdk/src/pg.rs")),
    (
        "weir-sdk/src/plugin.rs",
        include_str!("../../../sdk/src/plugin.rs"),
    ),
    ("wit/weir-plugin.wit", WIT),
];

/// The directory this binary's SDK goes to under `base`: `<version>-<hash>`, the hash of
/// the files, so two builds of one version with different SDKs never share it.
fn versioned(base: &Path) -> PathBuf {
    let mut hash = Sha256::new();
    for (path, text) in FILES {
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    let hex: String = hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    base.join(format!("{}-{hex}", env!("CARGO_PKG_VERSION")))
}

/// Where the SDK is cached: `sdk/` beside the components' cache (`$WEIR_CACHE_DIR`'s
/// parent, else `~/.cache/weir`).
pub fn cache_base() -> Option<PathBuf> {
    let components = crate::plugin::PluginEngine::default_cache_dir()?;
    Some(components.parent()?.join("sdk"))
}

/// Writes the SDK under `base` unless it is there already; returns the crate's
/// directory. Written into a temporary directory first and renamed, so a crate never
/// sees half an SDK.
pub fn install(base: &Path) -> anyhow::Result<PathBuf> {
    let dir = versioned(base);
    let krate = dir.join("weir-sdk");
    if FILES
        .iter()
        .all(|(path, text)| std::fs::read_to_string(dir.join(path)).is_ok_and(|t| t == *text))
    {
        return Ok(krate);
    }
    std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    let staging = tempfile::tempdir_in(base)
        .with_context(|| format!("writing the SDK under {}", base.display()))?;
    for (path, text) in FILES {
        let file = staging.path().join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(staging.keep(), &dir)
        .with_context(|| format!("moving the SDK to {}", dir.display()))?;
    Ok(krate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sdk/Cargo.toml` with its workspace dependencies resolved against the workspace.
    fn workspace_dependencies() -> toml::Table {
        let read = |p: &str| -> toml::Table {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
            toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        };
        let (sdk, root) = (read("../sdk/Cargo.toml"), read("../Cargo.toml"));
        let pinned = root["workspace"]["dependencies"].as_table().unwrap();
        let mut deps = toml::Table::new();
        for (name, spec) in sdk["dependencies"].as_table().unwrap() {
            let mut resolved = match &pinned[name] {
                toml::Value::String(v) => {
                    toml::Table::from_iter([("version".into(), v.clone().into())])
                }
                toml::Value::Table(t) => t.clone(),
                other => panic!("{name}: {other}"),
            };
            for (k, v) in spec.as_table().unwrap() {
                if k != "workspace" {
                    resolved.insert(k.clone(), v.clone());
                }
            }
            deps.insert(name.clone(), resolved.into());
        }
        deps
    }

    #[test]
    fn the_carried_manifest_has_the_sdks_dependencies_and_features() {
        let carried: toml::Table = toml::from_str(SDK_MANIFEST).unwrap();
        let mut deps = toml::Table::new();
        for (name, spec) in carried["dependencies"].as_table().unwrap() {
            let spec = match spec {
                toml::Value::String(v) => {
                    toml::Table::from_iter([("version".into(), v.clone().into())])
                }
                toml::Value::Table(t) => t.clone(),
                other => panic!("{name}: {other}"),
            };
            deps.insert(name.clone(), spec.into());
        }
        assert_eq!(deps, workspace_dependencies());
        let sdk: toml::Table = toml::from_str(include_str!("../../../sdk/Cargo.toml")).unwrap();
        assert_eq!(carried["features"], sdk["features"]);
    }

    #[test]
    fn every_source_file_of_the_sdk_is_carried() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| format!("weir-sdk/src/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let mut carried: Vec<String> = FILES
            .iter()
            .map(|(path, _)| path.to_string())
            .filter(|path| path.starts_with("weir-sdk/src/"))
            .collect();
        carried.sort();
        assert_eq!(carried, on_disk, "add new SDK files to FILES");
    }

    #[test]
    fn install_writes_the_crate_once_and_repairs_it() {
        let base = tempfile::tempdir().unwrap();
        let krate = install(base.path()).unwrap();
        assert!(krate.join("src/guest.rs").exists());
        assert_eq!(
            std::fs::read_to_string(krate.join("../wit/weir-plugin.wit")).unwrap(),
            WIT
        );
        std::fs::write(krate.join("src/lib.rs"), "broken").unwrap();
        assert_eq!(install(base.path()).unwrap(), krate);
        assert_eq!(
            std::fs::read_to_string(krate.join("src/lib.rs")).unwrap(),
            include_str!("../../../sdk/src/lib.rs")
        );
    }
}
