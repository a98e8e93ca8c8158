//! Reading sensor files and command output: pure functions on text.

use serde_json::{Map, Value};

use crate::config::FileFormat;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a number: {0:?}")]
    NotANumber(String),
    #[error(
        "w1_slave: the CRC check failed (first line does not end in YES): the read was garbled, try again"
    )]
    CrcFailed,
    #[error("w1_slave: no `t=` value on the second line")]
    NoTemperature,
    #[error("w1_slave: 85000 milli-°C is the sensor's power-on value, not a reading")]
    PowerOnValue,
    #[error("output is neither a number nor a JSON value: {0:?}")]
    NotJson(String),
}

fn snippet(text: &str) -> String {
    text.trim().chars().take(60).collect()
}

fn number(text: &str) -> Result<f64, ParseError> {
    let trimmed = text.trim();
    trimmed
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| ParseError::NotANumber(snippet(trimmed)))
}

/// A 1-wire temperature sensor's `w1_slave` (DS18B20 and kin):
///
/// ```text
/// 72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
/// 72 01 4b 46 7f ff 0e 10 57 t=23125
/// ```
///
/// in °C. `NO` on the first line is a failed CRC (a garbled bus read).
pub fn w1_slave(text: &str) -> Result<f64, ParseError> {
    let mut lines = text.lines();
    let crc = lines.next().unwrap_or_default().trim_end();
    if !crc.ends_with("YES") {
        return Err(ParseError::CrcFailed);
    }
    let data = lines.next().unwrap_or_default();
    let raw = data
        .split_once("t=")
        .map(|(_, t)| t.trim())
        .ok_or(ParseError::NoTemperature)?;
    let milli: i64 = raw
        .parse()
        .map_err(|_| ParseError::NotANumber(snippet(raw)))?;
    if milli == 85_000 {
        return Err(ParseError::PowerOnValue);
    }
    Ok(milli as f64 / 1000.0)
}

/// A sensor file's value in the unit it is reported in.
pub fn file_value(text: &str, format: FileFormat, scale: Option<f64>) -> Result<f64, ParseError> {
    match format {
        FileFormat::Number => Ok(number(text)? * scale.unwrap_or(1.0)),
        // Thermal zones and hwmon `temp*_input`: integer milli-degrees.
        FileFormat::Milli => Ok(number(text)? / 1000.0),
        FileFormat::W1Slave => w1_slave(text),
    }
}

/// A command's output as `data` fields: a number is `{name: n}`, a JSON object gives its
/// own fields, any other JSON value is `{name: value}`.
pub fn command_output(text: &str, name: &str) -> Result<Map<String, Value>, ParseError> {
    let trimmed = text.trim();
    let mut data = Map::new();
    if let Ok(n) = number(trimmed) {
        data.insert(name.to_owned(), n.into());
        return Ok(data);
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(other) => {
            data.insert(name.to_owned(), other);
            Ok(data)
        }
        Err(_) => Err(ParseError::NotJson(snippet(trimmed))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w1_slave_readings() {
        let good = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
        assert_eq!(w1_slave(good), Ok(23.125));
        let below_zero =
            "5e ff 4b 46 7f ff 02 10 1f : crc=1f YES\n5e ff 4b 46 7f ff 02 10 1f t=-10125\n";
        assert_eq!(w1_slave(below_zero), Ok(-10.125));
        let bad_crc =
            "72 01 4b 46 7f ff 0e 10 57 : crc=00 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
        assert_eq!(w1_slave(bad_crc), Err(ParseError::CrcFailed));
        assert_eq!(w1_slave(""), Err(ParseError::CrcFailed));
        assert_eq!(
            w1_slave("aa : crc=57 YES\naa\n"),
            Err(ParseError::NoTemperature)
        );
        assert_eq!(
            w1_slave("aa : crc=57 YES\naa t=85000\n"),
            Err(ParseError::PowerOnValue)
        );
        assert!(matches!(
            w1_slave("aa : crc=57 YES\naa t=abc\n"),
            Err(ParseError::NotANumber(_))
        ));
    }

    #[test]
    fn thermal_and_hwmon_files() {
        // /sys/class/thermal/thermal_zone0/temp and hwmon temp1_input: milli-°C.
        assert_eq!(file_value("47234\n", FileFormat::Milli, None), Ok(47.234));
        assert_eq!(file_value("-5000", FileFormat::Milli, None), Ok(-5.0));
        // hwmon in0_input (mV) read as volts, fan1_input (RPM) as is.
        assert_eq!(
            file_value("1200\n", FileFormat::Number, Some(0.001)),
            Ok(1.2)
        );
        assert_eq!(file_value(" 2400 ", FileFormat::Number, None), Ok(2400.0));
        assert!(matches!(
            file_value("", FileFormat::Number, None),
            Err(ParseError::NotANumber(_))
        ));
        assert!(file_value("NaN", FileFormat::Number, None).is_err());
    }

    #[test]
    fn command_outputs() {
        let data = command_output("21.5\n", "soil").unwrap();
        assert_eq!(Value::Object(data), serde_json::json!({"soil": 21.5}));
        let data = command_output(r#"{"humidity": 40, "pressure": 1013.2}"#, "bme").unwrap();
        assert_eq!(
            Value::Object(data),
            serde_json::json!({"humidity": 40, "pressure": 1013.2})
        );
        let data = command_output("true", "door").unwrap();
        assert_eq!(Value::Object(data), serde_json::json!({"door": true}));
        assert!(matches!(
            command_output("error: no sensor", "x"),
            Err(ParseError::NotJson(_))
        ));
    }
}
