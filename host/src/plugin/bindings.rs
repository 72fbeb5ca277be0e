//! Host bindings, one module per frozen WIT version. A new `weir:plugin` version gets a
//! module of its own beside these; old plugins keep working through theirs.

/// `weir:plugin@0.1.0`.
pub mod v0_1_0 {
    /// The `transformer` world (and the shared `types` and `host` interfaces).
    pub mod transformer {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "transformer",
        });
    }

    /// The `sink-plugin` world, sharing the transformer's `types` and `host`.
    pub mod sink {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "sink-plugin",
            with: {
                "weir:plugin/types": super::transformer::weir::plugin::types,
                "weir:plugin/host": super::transformer::weir::plugin::host,
            },
        });
    }

    /// The interface names a component of this version exports.
    pub const TRANSFORM_EXPORT: &str = "weir:plugin/transform@0.1.0";
    pub const SINK_EXPORT: &str = "weir:plugin/sink@0.1.0";
}
