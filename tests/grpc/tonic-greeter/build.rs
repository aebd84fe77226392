//! The greeter's own contract: `guests/grpc-greeter/proto/helloworld.proto`.
fn main() -> std::io::Result<()> {
    let proto = "../../../guests/grpc-greeter/proto/helloworld.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(&[proto], &["../../../guests/grpc-greeter/proto"])
}
