//! An RGB picture that figures are drawn on: filled rectangles, text in the public-domain
//! 8 × 8 bitmap font of the `font8x8` crate (drawn at an integer scale), other pictures
//! pasted in, and PNG encoding with the `png` crate. Everything drawn is clipped to the
//! picture.

use anyhow::{Context, Result};
use font8x8::{BASIC_FONTS, GREEK_FONTS, LATIN_FONTS, UnicodeFonts};
use std::io::BufWriter;
use std::path::Path;

/// One pixel: red, green, blue.
pub type Rgb = [u8; 3];

/// The background of every figure.
pub const WHITE: Rgb = [255, 255, 255];
/// Text, frames, ticks and scale bars.
pub const BLACK: Rgb = [0, 0, 0];
/// Values that are not numbers (NaN: positions outside a ROI or not processed): a
/// neutral grey that none of the colour maps used contains.
pub const NAN_GREY: Rgb = [128, 128, 128];

/// Width and height of one glyph of the font at scale 1, pixels.
pub const GLYPH: usize = 8;

/// A rectangle on a canvas, pixels from the top-left corner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left edge.
    pub x: usize,
    /// Top edge.
    pub y: usize,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

impl Rect {
    /// One past the right edge.
    pub fn right(&self) -> usize {
        self.x + self.w
    }
    /// One past the bottom edge.
    pub fn bottom(&self) -> usize {
        self.y + self.h
    }
}

/// An RGB picture, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<Rgb>,
}

impl Canvas {
    /// A `width` × `height` picture filled with `background`.
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        Self {
            width,
            height,
            pixels: vec![background; width * height],
        }
    }

    /// Width, pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height, pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixel at column `x`, row `y`; `None` outside the picture.
    pub fn pixel(&self, x: usize, y: usize) -> Option<Rgb> {
        (x < self.width && y < self.height).then(|| self.pixels[y * self.width + x])
    }

    /// Fills `r` (clipped to the picture) with `colour`.
    pub fn fill(&mut self, r: Rect, colour: Rgb) {
        let (x1, y1) = (r.right().min(self.width), r.bottom().min(self.height));
        for y in r.y.min(y1)..y1 {
            let row = y * self.width;
            self.pixels[row + r.x.min(x1)..row + x1].fill(colour);
        }
    }

    /// A one-pixel frame just outside `r`.
    pub fn frame(&mut self, r: Rect, colour: Rgb) {
        let (x0, y0) = (r.x.saturating_sub(1), r.y.saturating_sub(1));
        let (w, h) = (r.right() + 1 - x0, r.bottom() + 1 - y0);
        for side in [
            Rect {
                x: x0,
                y: y0,
                w,
                h: 1,
            },
            Rect {
                x: x0,
                y: r.bottom(),
                w,
                h: 1,
            },
            Rect {
                x: x0,
                y: y0,
                w: 1,
                h,
            },
            Rect {
                x: r.right(),
                y: y0,
                w: 1,
                h,
            },
        ] {
            self.fill(side, colour);
        }
    }

    /// Draws `text` with its top-left corner at (`x`, `y`), each glyph `8 × scale` pixels
    /// square; returns its width ([`text_width`]). Characters the font lacks are drawn as `?`.
    pub fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, colour: Rgb) -> usize {
        let scale = scale.max(1);
        for (i, c) in text.chars().enumerate() {
            let gx = x + i * GLYPH * scale;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..GLYPH {
                    // Bit 0 is the leftmost pixel of a row.
                    if bits & (1 << col) != 0 {
                        self.fill(
                            Rect {
                                x: gx + col * scale,
                                y: y + row * scale,
                                w: scale,
                                h: scale,
                            },
                            colour,
                        );
                    }
                }
            }
        }
        text_width(text, scale)
    }

    /// Copies `other` into this picture with its top-left corner at (`x`, `y`) (clipped).
    pub fn paste(&mut self, other: &Canvas, x: usize, y: usize) {
        let w = other.width.min(self.width.saturating_sub(x));
        for row in 0..other.height.min(self.height.saturating_sub(y)) {
            let to = (y + row) * self.width + x;
            let from = row * other.width;
            self.pixels[to..to + w].copy_from_slice(&other.pixels[from..from + w]);
        }
    }

    /// Writes the picture as an 8-bit RGB PNG at `path`.
    ///
    /// # Errors
    /// The file cannot be created or written, or the picture is empty or too large for a
    /// PNG (the error names the file).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let (w, h) = (u32::try_from(self.width), u32::try_from(self.height));
        let (Ok(w), Ok(h)) = (w, h) else {
            anyhow::bail!(
                "{}: a {} × {} picture is too large for a PNG",
                path.display(),
                self.width,
                self.height
            );
        };
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut enc = png::Encoder::new(BufWriter::new(file), w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.add_text_chunk("Software".into(), "stemflow".into())
            .with_context(|| format!("writing {}", path.display()))?;
        let mut writer = enc
            .write_header()
            .with_context(|| format!("writing {}", path.display()))?;
        writer
            .write_image_data(self.pixels.as_flattened())
            .with_context(|| format!("writing {}", path.display()))?;
        writer
            .finish()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// The width of `text` drawn at `scale`, pixels (every glyph is `8 × scale` wide).
pub fn text_width(text: &str, scale: usize) -> usize {
    text.chars().count() * GLYPH * scale.max(1)
}

/// The 8 × 8 bitmap of `c` (rows top to bottom, bit 0 leftmost): ASCII, Latin-1 (µ, Å, ×,
/// °) and Greek from font8x8; `?` for anything else.
fn glyph(c: char) -> [u8; 8] {
    BASIC_FONTS
        .get(c)
        .or_else(|| LATIN_FONTS.get(c))
        .or_else(|| GREEK_FONTS.get(c))
        .or_else(|| BASIC_FONTS.get('?'))
        .unwrap_or([0xff; 8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_at_scale_and_clipped() {
        let mut c = Canvas::new(40, 20, WHITE);
        // 'F': its stem is the leftmost set column of the second row (0x46 = columns 1, 2, 6).
        let w = c.text(0, 0, "F", 2, BLACK);
        assert_eq!(w, 16);
        assert_eq!(c.pixel(2, 2), Some(BLACK));
        assert_eq!(c.pixel(0, 2), Some(WHITE));
        // Clipped at the right edge, no panic.
        c.text(36, 16, "Fµ×?", 3, BLACK);
        assert_eq!(text_width("µm", 1), 16);
    }

    #[test]
    fn frame_and_paste() {
        let mut c = Canvas::new(10, 10, WHITE);
        let r = Rect {
            x: 2,
            y: 2,
            w: 3,
            h: 3,
        };
        c.frame(r, BLACK);
        assert_eq!(c.pixel(1, 1), Some(BLACK));
        assert_eq!(c.pixel(5, 5), Some(BLACK));
        assert_eq!(c.pixel(3, 3), Some(WHITE));
        let mut small = Canvas::new(4, 4, BLACK);
        small.fill(
            Rect {
                x: 0,
                y: 0,
                w: 1,
                h: 1,
            },
            NAN_GREY,
        );
        c.paste(&small, 8, 8);
        assert_eq!(c.pixel(8, 8), Some(NAN_GREY));
        assert_eq!(c.pixel(9, 9), Some(BLACK));
        assert_eq!(c.pixel(10, 10), None);
    }
}
