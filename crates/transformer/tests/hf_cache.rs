//! `hf:OWNER/NAME` resolves through the Hugging Face cache layout, offline.
//! Its own test binary: it sets HF_HUB_CACHE for the whole process.

use casetag_transformer::fixtures::write_tiny_bert;
use casetag_transformer::Encoder;

#[test]
fn hf_spec_resolves_from_the_cache_layout() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--acme--tiny-bert");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    write_tiny_bert(&repo.join("snapshots").join(commit), 3).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
    std::env::set_var("HF_HUB_CACHE", cache.path());

    let dev = candle_core::Device::Cpu;
    let e = Encoder::load("hf:acme/tiny-bert", &dev).unwrap();
    assert_eq!(e.hidden_size(), 32);
    assert_eq!(e.source(), "hf:acme/tiny-bert");
    let pinned = Encoder::load(&format!("hf:acme/tiny-bert@{commit}"), &dev).unwrap();
    assert_eq!(pinned.hidden_size(), 32);

    let err = Encoder::load("hf:acme/absent", &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
    let err = Encoder::load("hf:acme/tiny-bert@dev", &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
    let err = Encoder::load("hf:noslash", &dev).err().unwrap().to_string();
    assert!(err.contains("expected hf:OWNER/NAME"), "{err}");
}
