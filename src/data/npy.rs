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
    let file = npyz::NpyFile::new(bytes)
        .map_err(|e| format_error(path, format!("not a valid .npy file: {e}")))?;
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
