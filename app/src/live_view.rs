//! The live view (`--live-view ADDR`): the partial results of a running acquisition over
//! HTTP, for a browser beside the microscope.
//!
//! Where the data comes from: the processing engine publishes a merged snapshot every
//! `--snapshot-interval-ms` (an `Arc<LiveSnapshot>` on a watch channel); the orchestrator
//! copies the latest one into [`InstrumentStatus::snapshot`] with the state and the frame
//! counts, and at the end of a run replaces it with the final merged results. The server
//! follows that status channel: a request clones the latest status (an `Arc`, taken under
//! the channel's read lock only for the clone) and PNG images are rendered when asked for,
//! on the blocking pool, so the data path never waits for a browser.
//!
//! Routes:
//! - `GET /`: a self-contained HTML page (no external assets) with every 2-D nav result
//!   of the latest snapshot as an image, the frame counts and the run state; a few lines of
//!   inline JS poll `/status.json` every 500 ms and reload the images of a new snapshot.
//! - `GET /status.json`: `{"frames_processed", "frames_expected", "state", "snapshot",
//!   "results": [{"udf", "buffer", "shape", "unit", "finite", "image"}]}`;
//!   `frames_processed` is the latest snapshot's, `snapshot`
//!   counts the snapshots seen (0: none yet), `finite` the finite values of the buffer
//!   (positions processed so far, for a nav buffer), `image` the URL of its PNG or null.
//! - `GET /result/<udf>/<buffer>.png`: that 2-D nav result as an 8-bit greyscale PNG of
//!   `nav_cols × nav_rows` pixels, scaled as the final `<udf>_<buffer>_raw.png` outputs are
//!   (signed maps symmetric about zero, NaN black); 404 with the names that exist.

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use stemflow_actors::orchestrator::InstrumentStatus;
use stemflow_actors::processing::LiveSnapshot;
use stemflow_core::result::{BufferKind, ResultBuffer};
use stemflow_recording::png::to_grey8;
use tokio::sync::watch;

/// The latest status with the number of the snapshot it carries.
#[derive(Clone, Debug)]
struct View {
    /// Snapshots seen so far (a new `Arc` in the status counts as one); 0 before the first.
    snapshot: u64,
    /// State, frame counts and the latest snapshot.
    status: InstrumentStatus,
}

/// The live view's listening socket, bound before the instrument starts so that a busy or
/// invalid address fails the command before anything moves.
pub struct LiveView {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl LiveView {
    /// Binds `addr` (e.g. `127.0.0.1:8080`; port 0 picks a free port). Must be called on a
    /// tokio runtime with I/O enabled.
    ///
    /// # Errors
    /// The address cannot be bound (in use, not local, no permission); the message names it.
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("live view: binding {addr}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("live view: the address bound for {addr}"))?;
        Ok(Self { listener, addr })
    }

    /// The bound address (with the actual port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the routes of the module documentation from `status` on the current tokio
    /// runtime, until the runtime shuts down (i.e. the command exits: the final results
    /// stay visible while the outputs are written). After the instrument's status channel
    /// closes, the last status is served. The returned task can be aborted to stop early;
    /// dropping it does not stop the server.
    pub fn serve(self, status: watch::Receiver<InstrumentStatus>) -> tokio::task::JoinHandle<()> {
        let first = View {
            snapshot: 0,
            status: status.borrow().clone(),
        };
        let (tx, rx) = watch::channel(first);
        tokio::spawn(follow(status, tx));
        let app = axum::Router::new()
            .route("/", axum::routing::get(index))
            .route("/status.json", axum::routing::get(status_json))
            .route("/result/{udf}/{file}", axum::routing::get(result_png))
            .fallback(not_found)
            .with_state(rx);
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(self.listener, app).await {
                tracing::warn!("live view on {addr} stopped: {e}");
            }
        })
    }
}

/// Copies every status update into `tx`, numbering the snapshots, until the instrument's
/// status channel closes (the last view stays readable from `tx`'s receivers).
async fn follow(mut status: watch::Receiver<InstrumentStatus>, tx: watch::Sender<View>) {
    let mut seen = status.borrow().snapshot.clone();
    let mut number = 0u64;
    while status.changed().await.is_ok() {
        let s = status.borrow_and_update().clone();
        if !Arc::ptr_eq(&s.snapshot, &seen) {
            seen = Arc::clone(&s.snapshot);
            number += 1;
        }
        tx.send_replace(View {
            snapshot: number,
            status: s,
        });
    }
}

/// True for a buffer shown as an image: one value per scan position of a 2-D scan.
fn is_image(b: &ResultBuffer) -> bool {
    b.kind == BufferKind::Nav
        && b.shape.len() == 2
        && b.shape[0] > 0
        && b.shape[1] > 0
        && b.shape[0].checked_mul(b.shape[1]) == Some(b.data.len())
}

/// The 2-D nav results of `snap`: (UDF name, buffer).
fn images(snap: &LiveSnapshot) -> impl Iterator<Item = (&str, &ResultBuffer)> {
    snap.results.iter().flat_map(|r| {
        r.buffers
            .iter()
            .filter(|b| is_image(b))
            .map(move |b| (r.udf.as_str(), b))
    })
}

/// The URL of a result's PNG, names percent-encoded.
fn image_url(udf: &str, buffer: &str) -> String {
    format!("/result/{}/{}.png", percent(udf), percent(buffer))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Escapes text for HTML element content and quoted attributes.
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Renders `data` (row-major, `rows × cols`) as an 8-bit greyscale PNG (`cols` wide,
/// `rows` high), scaled as the final image outputs are: symmetric about zero when a value is
/// negative (CoM x/y), else between the 0.5 and 99.5 percentiles; NaN black.
///
/// # Errors
/// The PNG encoder failed (a dimension above `u32::MAX`, or `data.len() != rows * cols`).
pub fn render_png(data: &[f64], rows: usize, cols: usize) -> Result<Vec<u8>> {
    // The same scaling as the final files.
    let (grey, _) = to_grey8(data, crate::output::scaling_for(data));
    let (w, h) = (
        u32::try_from(cols).context("image wider than u32::MAX")?,
        u32::try_from(rows).context("image higher than u32::MAX")?,
    );
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, w, h);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().context("encoding the PNG header")?;
    writer.write_image_data(&grey).with_context(|| {
        format!(
            "encoding {rows}×{cols} PNG pixels from {} values",
            data.len()
        )
    })?;
    writer.finish().context("finishing the PNG")?;
    Ok(bytes)
}

/// A response that no cache keeps (every poll must see the latest snapshot).
fn fresh(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A plain-text 404.
fn missing(text: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn not_found() -> Response {
    missing(
        "not found; the live view serves /, /status.json and /result/<udf>/<buffer>.png\n".into(),
    )
}

async fn status_json(State(view): State<watch::Receiver<View>>) -> Response {
    let v = view.borrow().clone();
    fresh("application/json", status_body(&v))
}

/// The `/status.json` document of `v`.
fn status_body(v: &View) -> String {
    let s = &v.status;
    // The same entries as `run.json`'s results, plus each 2-D nav result's image URL.
    let mut results = crate::output::results_index(&s.snapshot.results);
    if let Some(entries) = results.as_array_mut() {
        let buffers = s.snapshot.results.iter().flat_map(|r| {
            r.buffers
                .iter()
                .map(move |b| is_image(b).then(|| image_url(&r.udf, &b.name)))
        });
        for (e, image) in entries.iter_mut().zip(buffers) {
            e["image"] = serde_json::json!(image);
        }
    }
    serde_json::json!({
        // The snapshot's own count, consistent with its results (the status count lags the
        // final snapshot by up to one orchestrator tick).
        "frames_processed": s.snapshot.frames_processed,
        "frames_expected": s.frames_expected,
        "state": s.state.to_string(),
        "snapshot": v.snapshot,
        "results": results,
    })
    .to_string()
}

async fn index(State(view): State<watch::Receiver<View>>) -> Response {
    let v = view.borrow().clone();
    fresh("text/html; charset=utf-8", page(&v))
}

/// The HTML page of `v`.
fn page(v: &View) -> String {
    let s = &v.status;
    let urls: Vec<String> = images(&s.snapshot)
        .map(|(udf, b)| image_url(udf, &b.name))
        .collect();
    let mut figures = String::new();
    for ((udf, b), url) in images(&s.snapshot).zip(&urls) {
        let _ = writeln!(
            figures,
            "<figure><img src=\"{url}?s={n}\" data-src=\"{url}\" alt=\"{name}\">\
             <figcaption>{name} ({rows}×{cols}, {unit})</figcaption></figure>",
            n = v.snapshot,
            name = html(&format!("{udf} / {}", b.name)),
            rows = b.shape[0],
            cols = b.shape[1],
            unit = html(&b.unit),
        );
    }
    if urls.is_empty() {
        figures.push_str("<p>No 2-D result yet.</p>\n");
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>stemflow live view</title>\n\
         <style>body{{font-family:sans-serif;background:#202020;color:#e0e0e0}}\
         figure{{display:inline-block;margin:8px}}\
         img{{width:256px;image-rendering:pixelated;background:#000}}\
         figcaption{{text-align:center}}</style></head>\n<body>\n\
         <h1>stemflow live view</h1>\n\
         <p id=\"progress\">state {state}: {done} / {expected} frames (snapshot {n})</p>\n\
         <div id=\"images\" data-key=\"{key}\">\n{figures}</div>\n\
         <script>\n\
         const key = document.getElementById('images').dataset.key;\n\
         async function tick() {{\n\
         \x20 try {{\n\
         \x20   const s = await (await fetch('/status.json', {{cache: 'no-store'}})).json();\n\
         \x20   document.getElementById('progress').textContent =\n\
         \x20     `state ${{s.state}}: ${{s.frames_processed}} / ${{s.frames_expected}} frames (snapshot ${{s.snapshot}})`;\n\
         \x20   const k = s.results.filter(r => r.image).map(r => r.image).join(' ');\n\
         \x20   if (k !== key) {{ location.reload(); return; }}\n\
         \x20   for (const img of document.querySelectorAll('img[data-src]')) {{\n\
         \x20     const src = img.dataset.src + '?s=' + s.snapshot;\n\
         \x20     if (!img.src.endsWith(src)) img.src = src;\n\
         \x20   }}\n\
         \x20 }} catch (e) {{}}\n\
         \x20 setTimeout(tick, 500);\n\
         }}\n\
         setTimeout(tick, 500);\n\
         </script>\n</body></html>\n",
        state = html(&s.state.to_string()),
        done = s.snapshot.frames_processed,
        expected = s.frames_expected,
        n = v.snapshot,
        key = html(&urls.join(" ")),
    )
}

async fn result_png(
    State(view): State<watch::Receiver<View>>,
    Path((udf, file)): Path<(String, String)>,
) -> Response {
    let snap = Arc::clone(&view.borrow().status.snapshot);
    let found = file.strip_suffix(".png").and_then(|buffer| {
        snap.results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.udf == udf)
            .flat_map(|(i, r)| {
                r.buffers
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.name == buffer && is_image(b))
                    .map(move |(j, _)| (i, j))
            })
            .next()
    });
    let Some((i, j)) = found else {
        let names: Vec<String> = images(&snap)
            .map(|(u, b)| format!("/result/{u}/{}.png", b.name))
            .collect();
        let known = if names.is_empty() {
            "none yet".to_string()
        } else {
            names.join(", ")
        };
        return missing(format!(
            "no 2-D nav result `{udf}/{file}` in the latest snapshot ({} frames); images: {known}\n",
            snap.frames_processed
        ));
    };
    // Rendering sorts the values (percentiles): off the async workers that drive the run.
    let rendered = tokio::task::spawn_blocking(move || {
        let b = &snap.results[i].buffers[j];
        render_png(&b.data, b.shape[0], b.shape[1])
    })
    .await;
    match rendered {
        Ok(Ok(bytes)) => fresh("image/png", bytes),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the image failed: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stemflow_core::result::UdfResults;
    use stemflow_core::state::AcqState;

    fn buffer(name: &str, kind: BufferKind, shape: Vec<usize>, data: Vec<f64>) -> ResultBuffer {
        ResultBuffer {
            name: name.into(),
            kind,
            shape,
            data,
            unit: "counts".into(),
            dtype: Default::default(),
        }
    }

    fn view() -> View {
        let snapshot = Arc::new(LiveSnapshot {
            frames_processed: 3,
            results: vec![
                UdfResults {
                    udf: "virtual bf".into(),
                    params: String::new(),
                    buffers: vec![buffer(
                        "intensity",
                        BufferKind::Nav,
                        vec![2, 3],
                        vec![1.0, 2.0, 3.0, f64::NAN, f64::NAN, f64::NAN],
                    )],
                },
                UdfResults {
                    udf: "sum".into(),
                    params: String::new(),
                    buffers: vec![buffer("frame", BufferKind::Sig, vec![2, 2], vec![0.0; 4])],
                },
            ],
        });
        View {
            snapshot: 4,
            status: InstrumentStatus {
                state: AcqState::Running,
                frames_expected: 6,
                frames_processed: 3,
                bytes_per_frame: 8,
                frames_lost: 0,
                snapshot,
            },
        }
    }

    #[test]
    fn status_lists_every_buffer_with_its_finite_count_and_image() {
        let v: serde_json::Value = serde_json::from_str(&status_body(&view())).unwrap();
        assert_eq!(v["frames_processed"], 3);
        assert_eq!(v["frames_expected"], 6);
        assert_eq!(v["snapshot"], 4);
        assert_eq!(v["state"], AcqState::Running.to_string());
        let r = v["results"].as_array().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["udf"], "virtual bf");
        assert_eq!(r[0]["shape"], serde_json::json!([2, 3]));
        assert_eq!(r[0]["finite"], 3);
        assert_eq!(r[0]["image"], "/result/virtual%20bf/intensity.png");
        // A detector-plane buffer is no nav image.
        assert!(r[1]["image"].is_null());
    }

    #[test]
    fn page_shows_the_nav_images_only_escaped() {
        let p = page(&view());
        assert!(p.contains("src=\"/result/virtual%20bf/intensity.png?s=4\""));
        assert!(!p.contains("/result/sum/"));
        assert!(p.contains("3 / 6 frames"));
        assert!(
            !p.contains("http://") && !p.contains("https://"),
            "external asset"
        );
    }

    #[test]
    fn png_is_cols_wide_and_rows_high_with_nan_black() {
        let bytes = render_png(&[1.0, 2.0, 3.0, f64::NAN, 5.0, 6.0], 2, 3).unwrap();
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let info = dec.info();
        assert_eq!((info.width, info.height), (3, 2));
        let mut px = vec![0; dec.output_buffer_size().unwrap()];
        dec.next_frame(&mut px).unwrap();
        assert_eq!(px[3], 0, "NaN is black");
        assert!(px[5] > px[0], "brighter for larger values");
    }

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(percent("com_x-1.~"), "com_x-1.~");
        assert_eq!(percent("a/b c"), "a%2Fb%20c");
    }
}
