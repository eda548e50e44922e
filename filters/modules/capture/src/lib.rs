//! `meshwarden_capture.wasm`: the capture stage alone.
meshwarden_filter_runtime::proxy_wasm::main! {{
    meshwarden_filter_runtime::module::install(|_| {
        meshwarden_filter_runtime::Pipeline::single(Box::<meshwarden_capture::CaptureStage>::default())
    });
}}
