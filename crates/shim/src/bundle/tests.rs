use super::*;

fn config(json: serde_json::Value) -> Config {
    serde_json::from_value(json).unwrap()
}

#[test]
fn memory_comes_from_the_annotation_then_the_limit() {
    assert_eq!(config(serde_json::json!({})).memory().unwrap(), DEFAULT_MEMORY);
    let limited = serde_json::json!({"linux": {"resources": {"memory": {"limit": 268435456}}}});
    assert_eq!(config(limited.clone()).memory().unwrap(), 256 << 20);
    let mut annotated = limited;
    annotated["annotations"] = serde_json::json!({"io.kiln.memory": "1G"});
    assert_eq!(config(annotated).memory().unwrap(), 1 << 30);
    let tiny = serde_json::json!({"linux": {"resources": {"memory": {"limit": 4096}}}});
    assert!(matches!(config(tiny).memory(), Err(BundleError::Memory(4096))));
    let bad = serde_json::json!({"annotations": {"io.kiln.memory": "lots"}});
    assert!(matches!(config(bad).memory(), Err(BundleError::Annotation(..))));
}

#[test]
fn vcpus_are_the_quota_rounded_up() {
    let quota = |quota: i64, period: u64| {
        config(serde_json::json!({"linux": {"resources": {"cpu": {"quota": quota, "period": period}}}})).cpus().unwrap()
    };
    assert_eq!(quota(150_000, 100_000), 2);
    assert_eq!(quota(50_000, 100_000), 1);
    assert_eq!(quota(-1, 100_000), 1, "no quota");
    assert_eq!(quota(1_000_000_000, 1000), kiln_vmm::vm::MAX_VCPUS);
    assert_eq!(config(serde_json::json!({"annotations": {"io.kiln.cpus": "3"}})).cpus().unwrap(), 3);
    assert!(config(serde_json::json!({"annotations": {"io.kiln.cpus": "0"}})).cpus().is_err());
}

#[test]
fn sandboxes_are_known_by_cris_annotation() {
    let pod = config(serde_json::json!({"annotations": {"io.kubernetes.cri.container-type": "sandbox"}}));
    assert!(pod.is_sandbox());
    assert!(!config(serde_json::json!({})).is_sandbox());
}

#[test]
fn unknown_kiln_annotations_and_scripts_are_refused() {
    let root = std::env::temp_dir().join(format!("kiln-shim-bundle-{}", std::process::id()));
    std::fs::create_dir_all(root.join("rootfs/bin")).unwrap();
    std::fs::write(root.join("rootfs/bin/script"), "#!/bin/sh\n").unwrap();
    let process = serde_json::json!({"args": ["script"], "env": ["PATH=/bin"], "cwd": "/"});
    let err = config(serde_json::json!({"process": process})).launch_spec(&root, "c1").unwrap_err();
    assert!(err.to_string().starts_with("/bin/script: Kiln runs Linux x86-64 ELF programs"), "{err}");
    let typo = config(serde_json::json!({"process": process, "annotations": {"io.kiln.memroy": "1G"}}));
    let err = typo.launch_spec(&root, "c1").unwrap_err();
    assert!(err.to_string().contains("unknown"), "{err}");
    let missing = config(serde_json::json!({"process": {"args": ["nothing"], "cwd": "/"}}));
    assert!(missing.launch_spec(&root, "c1").unwrap_err().to_string().contains("not found in the container's PATH"));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_descriptor_limit_is_taken_and_checked() {
    let limit = |kind: &str, soft: u64, hard: u64| Rlimit { kind: kind.into(), soft, hard };
    assert_eq!(nofile(&[]).unwrap(), None);
    assert_eq!(nofile(&[limit("RLIMIT_CORE", 0, 0), limit("RLIMIT_NOFILE", 1024, 4096)]).unwrap(), Some((1024, 4096)));
    let err = nofile(&[limit("RLIMIT_NOFILE", 2048, 1024)]).unwrap_err().to_string();
    assert!(err.contains("soft limit is above"), "{err}");
    assert!(nofile(&[limit("RLIMIT_NOFILE", 0, 0)]).is_err());
}

#[test]
fn a_pods_containers_share_its_network_unless_one_asks_for_the_tap() {
    let pod = serde_json::json!({"linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/pod"}]}});
    assert_eq!(config(pod.clone()).pod_network().unwrap(), PodNetwork::Shared);
    match pod_user_network() {
        Network::User { publish, publish_listens, addresses } => {
            assert!(publish.is_empty() && publish_listens);
            assert_eq!(addresses.ipv4, std::net::Ipv4Addr::new(10, 0, 2, 15));
        }
        other => panic!("{other:?}"),
    }
    let mut tap = pod;
    tap["annotations"] = serde_json::json!({"io.kiln.pod-network": "tap"});
    assert_eq!(config(tap.clone()).pod_network().unwrap(), PodNetwork::Tap);
    tap["annotations"] = serde_json::json!({"io.kiln.pod-network": "bridge"});
    let err = config(tap).pod_network().unwrap_err().to_string();
    assert!(err.contains("must be shared or tap"), "{err}");
}

#[test]
fn writable_directories_become_volumes_sized_by_their_annotation() {
    let root = std::env::temp_dir().join(format!("kiln-shim-writable-mounts-{}", std::process::id()));
    for dir in ["cache", "data", "logs"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let bind = |src: &str, dst: &str, mode: &str| serde_json::json!({"destination": dst, "type": "bind", "source": root.join(src), "options": ["rbind", mode]});
    let mounts = serde_json::json!([
        bind("cache", "/var/cache", "rw"),
        bind("data", "/data", "rw"),
        bind("logs", "/logs", "ro")
    ]);
    let annotations = serde_json::json!({"io.kiln.volume-size./data": "64M", "io.kiln.volume-size.var.cache": "8M"});
    let found = config(serde_json::json!({"mounts": mounts, "annotations": annotations})).writable_mounts().unwrap();
    let shown: Vec<_> = found.iter().map(|m| (m.guest.as_str(), m.size)).collect();
    assert_eq!(shown, [("/var/cache", 8 << 20), ("/data", 64 << 20)], "the read-only one is copied, not a volume");
    let default = config(serde_json::json!({"mounts": [bind("data", "/data", "rw")]})).writable_mounts().unwrap();
    assert_eq!(default[0].size, DEFAULT_VOLUME_SIZE);

    let tiny =
        serde_json::json!({"mounts": [bind("data", "/data", "rw")], "annotations": {"io.kiln.volume-size.data": "1M"}});
    let err = config(tiny).writable_mounts().unwrap_err().to_string();
    assert!(err.contains("from 4M to 1T"), "{err}");
    let nested = serde_json::json!({"mounts": [bind("data", "/data", "rw"), bind("cache", "/data/cache", "rw")]});
    let err = config(nested).writable_mounts().unwrap_err().to_string();
    assert!(err.contains("volumes cannot nest"), "{err}");
    let five: Vec<_> = (0..5).map(|i| bind("data", &format!("/v{i}"), "rw")).collect();
    let err = config(serde_json::json!({"mounts": five})).writable_mounts().unwrap_err().to_string();
    assert!(err.contains("at most 4 writable directories"), "{err}");

    // A size for a mount that is not there is a typo, refused as the other unknown annotations are.
    std::fs::create_dir_all(root.join("rootfs")).unwrap();
    let process = serde_json::json!({"args": ["/bin/none"], "cwd": "/"});
    let typo = serde_json::json!({"process": process, "mounts": [bind("data", "/data", "rw")],
        "annotations": {"io.kiln.volume-size./date": "64M"}});
    let err = config(typo).launch_spec(&root, "c1").unwrap_err().to_string();
    assert!(err.contains("io.kiln.volume-size./date") && err.contains("unknown"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
