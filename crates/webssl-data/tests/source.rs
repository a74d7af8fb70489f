//! Input resolution and deterministic item streams from folders, shards and file lists.

use std::path::Path;

use webssl_data::DataError;
use webssl_data::shards::Sample;
use webssl_data::source::{InputSpec, SourceOptions, iter_items, iter_items_with, resolve_inputs};

mod support;
use support::{per_shard, touch, write_shards};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn folder_order_is_sorted_depth_first_and_images_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imgs");
    // Created in scrambled order; read_dir order is filesystem-dependent, ours must not be.
    for name in [
        "b/z.png",
        "a.JPG",
        "b/a.webp",
        "c.txt",
        "b/sub/x.gif",
        "B.jpeg",
        "notes.md",
        "a.v2.png",
    ] {
        touch(&root.join(name), name.as_bytes());
    }
    let inputs = resolve_inputs(&[s(&root)]).unwrap();
    assert_eq!(inputs, vec![InputSpec::Folder(root.clone())]);
    let items: Vec<_> = iter_items(&inputs).map(|r| r.unwrap()).collect();
    let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["B", "a", "a.v2", "b/a", "b/sub/x", "b/z"]);
    assert_eq!(items[1].bytes, b"a.JPG");
    assert!(items[0].source.ends_with("B.jpeg"));
    // Same order on a second pass.
    let again: Vec<String> = iter_items(&inputs).map(|r| r.unwrap().key).collect();
    assert_eq!(again, keys);
}

#[test]
fn sidecar_captions_are_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    touch(&dir.path().join("cat.jpg"), b"img");
    touch(&dir.path().join("cat.txt"), b"  a cat on a mat\n");
    touch(&dir.path().join("dog.jpg"), b"img");
    let inputs = resolve_inputs(&[s(dir.path())]).unwrap();
    let plain: Vec<_> = iter_items(&inputs).map(|r| r.unwrap().caption).collect();
    assert_eq!(plain, [None, None]);
    let with: Vec<_> = iter_items_with(
        &inputs,
        SourceOptions {
            sidecar_captions: true,
        },
    )
    .map(|r| r.unwrap().caption)
    .collect();
    assert_eq!(with, [Some("a cat on a mat".to_string()), None]);
}

#[test]
fn file_lists_resolve_relative_to_the_list_and_keep_line_order() {
    let dir = tempfile::tempdir().unwrap();
    touch(&dir.path().join("data/x.png"), b"x");
    touch(&dir.path().join("data/y.jpg"), b"y");
    let list = dir.path().join("data/list.tsv");
    std::fs::write(
        &list,
        "# comment\ny.jpg\ta red bus\n\nx.png\nmissing.jpg\nreadme.md\n",
    )
    .unwrap();
    let inputs = resolve_inputs(&[s(&list)]).unwrap();
    assert_eq!(inputs, vec![InputSpec::FileList(list.clone())]);
    let out: Vec<_> = iter_items(&inputs).collect();
    assert_eq!(out.len(), 4);
    let y = out[0].as_ref().unwrap();
    assert_eq!(
        (y.key.as_str(), y.caption.as_deref(), y.bytes.as_slice()),
        ("y", Some("a red bus"), &b"y"[..])
    );
    assert_eq!(out[1].as_ref().unwrap().caption, None);
    assert!(
        matches!(out[2], Err(DataError::Io { .. })),
        "missing file is an item error, not fatal"
    );
    assert!(
        out[3]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("list.tsv:6")
    );
}

#[test]
fn shard_dirs_and_brace_patterns_resolve_to_tars() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shards");
    let samples = (0..5).map(|i| {
        Sample::new(format!("k{i}"))
            .with("png", vec![i as u8])
            .with("txt", format!("c{i}"))
            .with("cls", "3")
    });
    let noimg = Sample::new("noimg").with("txt", "caption only");
    write_shards(&out, "s", per_shard(2), samples.chain([noimg]));
    let by_index = resolve_inputs(&[s(&out)]).unwrap();
    assert_eq!(by_index.len(), 3);
    assert_eq!(by_index[0], InputSpec::Tar(out.join("s-000000.tar")));
    let pattern = format!("{}/s-{{000000..000002}}.tar", s(&out));
    assert_eq!(resolve_inputs(&[pattern]).unwrap(), by_index);
    // Without index.json: a directory of shards is still shards, not an empty image folder.
    std::fs::remove_file(out.join("index.json")).unwrap();
    assert_eq!(resolve_inputs(&[s(&out)]).unwrap(), by_index);

    let items: Vec<_> = iter_items(&by_index).collect();
    assert_eq!(items.len(), 6);
    let first = items[0].as_ref().unwrap();
    assert_eq!(first.caption.as_deref(), Some("c0"));
    assert_eq!(first.label, Some(3));
    assert!(first.source.ends_with("s-000000.tar:k0"));
    let err = items[5].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("s-000002.tar:noimg") && err.contains("no image"),
        "{err}"
    );
}

#[test]
fn missing_inputs_are_errors() {
    assert!(resolve_inputs(&["/definitely/not/here.tar".to_string()]).is_err());
    assert!(resolve_inputs(&["bad{pattern".to_string()]).is_err());
}
