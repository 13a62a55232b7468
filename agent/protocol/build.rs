//! Generates the ttrpc service and protobuf messages from protos/agent.proto
//! with the pure-Rust parser (no protoc).

use std::fs;
use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let proto = "protos/agent.proto";
    println!("cargo:rerun-if-changed={proto}");

    Codegen::new()
        .out_dir(&out)
        .inputs([proto])
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("ttrpc codegen failed");

    // The generated files start with inner attributes and inner doc comments,
    // which `include!` does not accept; the including module carries them instead.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = out.join(name);
        let text = fs::read_to_string(&path).expect("generated file exists");
        let kept: String = text
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !l.starts_with("#![") && !l.starts_with("//!")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&path, kept).expect("rewrite generated file");
    }
}
