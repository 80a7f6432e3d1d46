//! NumPy `.npy` arrays in and out: float32, float64 and float16 read (converted to f32),
//! float32 written. Errors name the file and what is wrong with it.

use std::path::Path;

use crate::{Error, Result};

/// A C-order array of f32 with its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in C order, converted to f32.
    pub data: Vec<f32>,
}

fn format_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn collect<T>(
    path: &Path,
    values: impl Iterator<Item = std::io::Result<T>>,
    convert: impl Fn(T) -> f32,
) -> Result<Vec<f32>> {
    values
        .map(|v| v.map(&convert))
        .collect::<std::io::Result<Vec<f32>>>()
        .map_err(|e| format_error(path, format!("bad array data: {e}")))
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &bytes)
}

/// Parses the bytes of a `.npy` file; `path` is the name errors give it. The data length is
/// checked against the header before anything is allocated from it.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Array> {
    check_header(path, bytes)?;
    let file = npyz::NpyFile::new(bytes).map_err(|e| {
        // npyz's header-syntax errors draw the header over several lines; the first says it.
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default().trim_end();
        format_error(path, format!("not a valid .npy file: {first}"))
    })?;
    let header = file.header().clone();
    let data = file.into_inner();
    if header.order() == npyz::Order::Fortran {
        return Err(format_error(
            path,
            "Fortran-order arrays are not supported; save np.ascontiguousarray(a) instead",
        ));
    }
    let dtype = header.dtype();
    let descr = dtype.descr();
    let item = dtype
        .num_bytes()
        .ok_or_else(|| format_error(path, format!("unsupported dtype {descr}")))?;
    let expected = (header.len() as u128) * item as u128;
    if (data.len() as u128) < expected {
        return Err(format_error(
            path,
            format!(
                "truncated: the header promises {} values of {descr} ({expected} bytes) but the file holds {} bytes of data",
                header.len(),
                data.len()
            ),
        ));
    }
    let shape: Vec<usize> = header.shape().iter().map(|&d| d as usize).collect();
    let file = npyz::NpyFile::with_header(header, data);
    let values = match file.try_data::<f32>() {
        Ok(reader) => collect(path, reader, |v| v)?,
        Err(file) => match file.try_data::<f64>() {
            Ok(reader) => collect(path, reader, |v| v as f32)?,
            Err(file) => match file.try_data::<half::f16>() {
                Ok(reader) => collect(path, reader, f32::from)?,
                Err(_) => {
                    return Err(format_error(
                        path,
                        format!("dtype {descr} is not supported; use float32, float64 or float16"),
                    ));
                }
            },
        },
    };
    Ok(Array {
        shape,
        data: values,
    })
}

/// numpy's own cap on the header it will parse (`max_header_size`).
const MAX_HEADER: usize = 10_000;
/// Brackets a header may nest: a plain dtype needs 2, a structured one a few more.
const MAX_NESTING: usize = 8;

/// Refuses headers that would cost npyz more than a file's worth of work (both found by
/// `fuzz/`): it allocates the length it reads before reading, so a corrupt length of 4 GiB
/// cost 4 GiB, and its parser takes time exponential in the depth of unclosed brackets, so a
/// 200-byte file with 22 of them took minutes.
fn check_header(path: &Path, bytes: &[u8]) -> Result<()> {
    // Magic (6 bytes), version (2), then the length: u16 in version 1, u32 after.
    let length = match bytes.get(6) {
        Some(1) => bytes
            .get(8..10)
            .map(|b| (u16::from_le_bytes([b[0], b[1]]) as usize, 10)),
        Some(_) => {
            (bytes.get(8..12)).map(|b| (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12))
        }
        None => None,
    };
    let Some((length, start)) = length else {
        return Ok(()); // too short for a header: npyz says so
    };
    let invalid = |why: String| Err(format_error(path, format!("not a valid .npy file: {why}")));
    if length > bytes.len() - start {
        return invalid(format!(
            "the header claims {length} bytes but the file holds {}",
            bytes.len() - start
        ));
    }
    if length > MAX_HEADER {
        return invalid(format!(
            "a header of {length} bytes is longer than numpy's limit of {MAX_HEADER}"
        ));
    }
    let mut depth = 0usize;
    for &byte in &bytes[start..start + length] {
        match byte {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_NESTING {
            return invalid(format!(
                "the header nests brackets deeper than {MAX_NESTING}"
            ));
        }
    }
    Ok(())
}

/// Writes f32 values as a C-order `.npy` file of the given shape, atomically: the data goes to
/// a temporary file beside the target, which is renamed into place when complete.
pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let expected: usize = shape.iter().product();
    if expected != data.len() {
        return Err(Error::Shape(format!(
            "{}: shape {shape:?} holds {expected} values, got {}",
            path.display(),
            data.len()
        )));
    }
    super::write_atomically(path, |file| {
        use npyz::WriterBuilder;
        let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&dims)
            .writer(file)
            .begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_shape_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        write(&path, &[2, 3, 4], &data).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.shape, vec![2, 3, 4]);
        assert_eq!(back.data, data);
    }

    #[test]
    fn truncated_data_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.npy");
        write(&path, &[100], &vec![1.0; 100]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("t.npy") && err.contains("truncated"), "{err}");
    }

    #[test]
    fn a_header_length_beyond_the_file_is_refused_before_allocating_it() {
        let mut bytes = b"\x93NUMPY\x03\x00".to_vec();
        bytes.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
        bytes.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n");
        let err = parse(Path::new("h.npy"), &bytes).unwrap_err().to_string();
        assert!(
            err.contains("h.npy") && err.contains("the header claims 4294967280 bytes"),
            "{err}"
        );
    }

    #[test]
    fn deeply_nested_headers_are_refused_before_parsing() {
        let header = format!(
            "{{'descr': '<f4', 'fortran_order': {}False, 'shape': (3,), }}\n",
            "[".repeat(22)
        );
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0; 12]);
        let err = parse(Path::new("deep.npy"), &bytes)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("deep.npy") && err.contains("nests brackets deeper than 8"),
            "{err}"
        );
    }

    #[test]
    fn integer_arrays_are_refused_with_their_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.npy");
        npyz::to_file_1d(&path, [1i32, 2, 3]).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("<i4") && err.contains("not supported"),
            "{err}"
        );
    }
}
