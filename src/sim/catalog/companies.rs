//! Companies: `search_companies` results and the `get_company` object.

use serde::Serialize;

use super::{CITIES, ItemKind, ItemRng};

/// Company names are a stem and a suffix, for more variety than a list.
const STEMS: [&str; 12] = [
    "Northwind",
    "Blue Harbor",
    "Quarry",
    "Lumen",
    "Fennel",
    "Orbital",
    "Cedar",
    "Kestrel",
    "Mosaic",
    "Tidewater",
    "Polaris",
    "Hive",
];
const SUFFIXES: [&str; 6] = [
    "Labs",
    "Group",
    "Systems",
    "Partners",
    "Analytics",
    "Health",
];
const INDUSTRIES: [&str; 8] = [
    "Software Development",
    "Financial Services",
    "Hospital & Health Care",
    "Logistics",
    "Renewable Energy",
    "Education",
    "Staffing and Recruiting",
    "Design Services",
];
const SIZES: [&str; 6] = [
    "2-10",
    "11-50",
    "51-200",
    "201-500",
    "501-1000",
    "1001-5000",
];

/// Who a generated company is.
struct Drawn {
    id: String,
    name: String,
    slug: String,
    industry: &'static str,
    city: &'static str,
    size: &'static str,
    followers: u32,
}

impl Drawn {
    fn draw(rng: &mut ItemRng) -> Self {
        let stem = rng.pick(&STEMS);
        let suffix = rng.pick(&SUFFIXES);
        let name = format!("{stem} {suffix}");
        let slug = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
            .map(|c| {
                if c == ' ' {
                    '-'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        Drawn {
            id: rng.between(1_000_000, 90_000_000).to_string(),
            name,
            slug,
            industry: rng.pick(&INDUSTRIES),
            city: rng.pick(&CITIES),
            size: rng.pick(&SIZES),
            followers: u32::try_from(rng.between(50, 250_000)).unwrap_or(50),
        }
    }
}

/// One `search_companies` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct CompanyResult {
    pub(crate) company_id: String,
    pub(crate) name: String,
    pub(crate) industry: String,
    pub(crate) location: String,
    pub(crate) company_url: String,
    pub(crate) employee_count_range: String,
    pub(crate) followers: u32,
}

/// The search result at `index` for `account_id` searching `keywords`.
pub(crate) fn company_result(account_id: &str, keywords: &str, index: u64) -> CompanyResult {
    let mut rng = ItemRng::scoped(&[account_id, keywords], ItemKind::Company, index);
    let drawn = Drawn::draw(&mut rng);
    CompanyResult {
        company_url: format!("https://www.linkedin.com/company/{}", drawn.slug),
        company_id: drawn.id,
        name: drawn.name,
        industry: drawn.industry.to_owned(),
        location: drawn.city.to_owned(),
        employee_count_range: drawn.size.to_owned(),
        followers: drawn.followers,
    }
}

/// A company page (`get_company`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Company {
    pub(crate) company_id: String,
    pub(crate) name: String,
    pub(crate) company_url: String,
    pub(crate) website: String,
    pub(crate) industry: String,
    pub(crate) headquarters: String,
    pub(crate) employee_count_range: String,
    pub(crate) employee_count: u32,
    pub(crate) followers: u32,
    pub(crate) founded: u32,
    pub(crate) description: String,
}

/// The company named by `company_id` or, without one, by `company_url`: the
/// same whoever asks. The given id or URL is echoed; the other is derived.
pub(crate) fn company(company_id: Option<&str>, company_url: Option<&str>) -> Company {
    let seed = company_id.or(company_url).unwrap_or_default();
    let mut rng = ItemRng::scoped(&[seed], ItemKind::Company, 0);
    let drawn = Drawn::draw(&mut rng);
    let employee_count = u32::try_from(rng.between(2, 5000)).unwrap_or(2);
    Company {
        company_id: company_id.map_or(drawn.id, str::to_owned),
        company_url: company_url.map_or_else(
            || format!("https://www.linkedin.com/company/{}", drawn.slug),
            str::to_owned,
        ),
        website: format!("https://www.{}.example", drawn.slug),
        industry: drawn.industry.to_owned(),
        headquarters: drawn.city.to_owned(),
        employee_count_range: drawn.size.to_owned(),
        employee_count,
        followers: drawn.followers,
        founded: u32::try_from(rng.between(1950, 75)).unwrap_or(2000),
        description: format!(
            "{} is a {} company headquartered in {}.",
            drawn.name,
            drawn.industry.to_lowercase(),
            drawn.city
        ),
        name: drawn.name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companies_are_deterministic_and_echo_what_was_asked() {
        assert_eq!(company_result("a", "", 3), company_result("a", "", 3));
        assert_ne!(company_result("a", "", 3), company_result("a", "energy", 3));
        let by_url = company(None, Some("https://www.linkedin.com/company/x"));
        assert_eq!(by_url.company_url, "https://www.linkedin.com/company/x");
        assert!(by_url.company_id.parse::<u64>().is_ok());
        let by_id = company(Some("1337"), None);
        assert_eq!(by_id.company_id, "1337");
        assert!(
            by_id
                .company_url
                .starts_with("https://www.linkedin.com/company/")
        );
        assert_eq!(by_id, company(Some("1337"), None));
        assert!((1950..2025).contains(&by_id.founded));
    }
}
