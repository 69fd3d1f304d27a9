//! Compiles `proto/felix.proto` (Felix's dataplane-driver messages) into Rust with prost, using protox as
//! the protobuf compiler so the build needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/felix.proto");
    let descriptors = protox::compile(["proto/felix.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
