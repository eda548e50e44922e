//! `meshwarden.wasm`: every stage in one module. Root id `meshwarden` (or none) runs trace →
//! capture → rate limit → circuit breaker → fault → mirror in one pass with one
//! configuration section per stage; root id `trace`, `capture`, `ratelimit`,
//! `circuitbreaker`, `fault` or `mirror` (optionally `meshwarden.`-prefixed) runs that
//! stage alone, so separate filters can share one VM.
meshwarden_filter_runtime::proxy_wasm::main! {{
    meshwarden_filter_runtime::module::install(meshwarden_stages::pipeline_for_root_id);
}}
