//! `meshwarden_circuitbreaker.wasm`: the circuit-breaker stage alone.
meshwarden_filter_runtime::proxy_wasm::main! {{
    meshwarden_filter_runtime::module::install(|_| {
        meshwarden_filter_runtime::Pipeline::single(
            Box::<meshwarden_circuitbreaker::CircuitBreakerStage>::default(),
        )
    });
}}
