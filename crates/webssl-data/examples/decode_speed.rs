//! JPEG decode speed on one thread: `decode_rgb` (libjpeg-turbo, Pillow-exact) vs zune-jpeg through
//! `image` (the decoder before issue #21, kept as the baseline `image` still links).
//!
//! `cargo run --release -p webssl-data --example decode_speed -- DIR [rounds]`
//!
//! DIR holds the JPEGs (e.g. `bench/make_data_images.py`'s 500×375 set). The files are read into
//! memory first; each round decodes every file once with each decoder, alternating which goes first.
//! Time is this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so a busy machine slows the wall
//! clock but not the figure. Prints the median over rounds of images and megapixels per CPU-second.

use webssl_data::decode::{DEFAULT_MAX_PIXELS, decode_rgb};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: decode_speed DIR [rounds]  (a folder of JPEGs)");
    let rounds: usize = args.next().map_or(5, |r| r.parse().expect("rounds"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read DIR")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    files.sort();
    let images: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!images.is_empty(), "no .jpg files in {dir}");
    let pixels: u64 = images
        .iter()
        .map(|b| {
            let (w, h) = webssl_data::decode::image_dimensions(b, "x").unwrap();
            u64::from(w) * u64::from(h)
        })
        .sum();

    let libjpeg = || {
        for b in &images {
            std::hint::black_box(decode_rgb(b, "x", DEFAULT_MAX_PIXELS).unwrap());
        }
    };
    let zune = || {
        for b in &images {
            std::hint::black_box(image::load_from_memory(b).unwrap().to_rgb8());
        }
    };
    let time = |f: &dyn Fn()| {
        let t = thread_cpu_secs();
        f();
        thread_cpu_secs() - t
    };
    libjpeg();
    zune();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        if r % 2 == 0 {
            a.push(time(&libjpeg));
            b.push(time(&zune));
        } else {
            b.push(time(&zune));
            a.push(time(&libjpeg));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let n = images.len() as f64;
    for (name, secs) in [
        ("libjpeg-turbo (decode_rgb)", median(&mut a)),
        ("zune-jpeg (image)", median(&mut b)),
    ] {
        println!(
            "{name:28} {:8.1} img per CPU-s {:7.1} Mpx per CPU-s",
            n / secs,
            pixels as f64 / secs / 1e6
        );
    }
}

fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; this clock exists on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
