//! Command-line definitions (clap derive; doc comments are the help).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Tillsync: an offline-first point of sale. Every till keeps selling with
/// no network; `till` drives tills, the hub and backups.
#[derive(Parser, Debug)]
#[command(name = "till", version, about, propagate_version = true)]
pub struct Cli {
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The till's data folder.
#[derive(Args, Debug, Clone)]
pub struct Data {
    /// The till's data folder.
    #[arg(long, env = "TILL_DATA")]
    pub data: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a hub with a sample tenant and two tills, all syncing, in a
    /// local folder; prints where each part is. Ctrl-C stops it.
    Demo {
        /// Folder for the demo (default: ./tillsync-demo; an earlier demo there is replaced).
        #[arg(long, default_value = "tillsync-demo")]
        dir: PathBuf,
        /// A single standalone till instead: sell, split tender, refund, report.
        #[arg(long)]
        offline: bool,
        /// Stop after this many seconds (0: run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        exit_after: u64,
    },
    /// Create or manage this till.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Catalogue: add, change, list and show products.
    #[command(subcommand)]
    Product(ProductCmd),
    /// Stock: receive, count and list.
    #[command(subcommand)]
    Stock(StockCmd),
    /// Customers.
    #[command(subcommand)]
    Customer(CustomerCmd),
    /// Staff and their PINs.
    #[command(subcommand)]
    Staff(StaffCmd),
    /// Ring up a sale and print its receipt.
    Sale(SaleArgs),
    /// Past sales.
    #[command(subcommand)]
    Sales(SalesCmd),
    /// Refund some or all of a sale (a manager approves).
    Refund {
        #[command(flatten)]
        data: Data,
        /// Receipt number of the sale, e.g. T1A2-000012.
        receipt: String,
        /// Item to refund as SKU:QTY (repeat); none refunds everything left.
        #[arg(long = "item")]
        items: Vec<String>,
        /// The approving manager (name or id).
        #[arg(long, env = "TILL_MANAGER")]
        manager: Option<String>,
        /// The approving manager's PIN.
        #[arg(long = "manager-pin", env = "TILL_MANAGER_PIN")]
        manager_pin: Option<String>,
        /// Why the refund is made.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Void a whole sale (a manager approves).
    Void {
        #[command(flatten)]
        data: Data,
        /// Receipt number of the sale.
        receipt: String,
        /// The approving manager (name or id).
        #[arg(long, env = "TILL_MANAGER")]
        manager: Option<String>,
        /// The approving manager's PIN.
        #[arg(long = "manager-pin", env = "TILL_MANAGER_PIN")]
        manager_pin: Option<String>,
        /// Why the sale is voided.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cash drawer movements: float, pay-in, pay-out.
    Cash {
        #[command(flatten)]
        data: Data,
        /// float, pay-in or pay-out.
        kind: String,
        /// Amount as a decimal, e.g. 100.00.
        #[arg(long)]
        amount: String,
        /// Why the cash moved.
        #[arg(long)]
        reason: Option<String>,
    },
    /// The day's X report: totals by tender, tax and staff, refunds, cash.
    Report {
        #[command(flatten)]
        data: Data,
        /// The day as YYYY-MM-DD in the store's time zone (default: today).
        #[arg(long)]
        day: Option<String>,
    },
    /// The till's identity, pending changes per lane, digest and alerts.
    Status {
        #[command(flatten)]
        data: Data,
    },
    /// Conflicting edits of the same field.
    #[command(subcommand)]
    Conflicts(ConflictsCmd),
    /// Tenant settings (currency, tax-inclusive prices, cash rounding, ...).
    #[command(subcommand)]
    Settings(SettingsCmd),
    /// Conflict policies of a standalone till (a hub sets them for a tenant).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// The hub: serve it, and administer tenants, stores and enrolment.
    #[command(subcommand)]
    Hub(HubCmd),
    /// Run one sync round with the hub now.
    Sync {
        #[command(flatten)]
        data: Data,
        /// Pull large backlogs even on a metered link.
        #[arg(long)]
        force: bool,
        /// Re-pull the whole scope from the hub's snapshot and compare digests.
        #[arg(long)]
        full: bool,
    },
    /// The network as this till sees it: links, metered, hub reachability.
    Network {
        #[command(flatten)]
        data: Data,
    },
    /// Backups: create, list, verify, prune, restore (always encrypted).
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Device settings in DIR/till.toml.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Devices of a tenant, seen through the hub (admin token).
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Write the changes that have not reached the hub to a file.
    ExportPending {
        #[command(flatten)]
        data: Data,
        /// The file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Every change this till made, acknowledged or not (for a till the
        /// hub stopped as forked: its acknowledgements may be its copy's).
        #[arg(long)]
        all: bool,
    },
    /// Bring exported changes into this till (same merchant); importing twice adds nothing.
    ImportPending {
        #[command(flatten)]
        data: Data,
        /// A file written by `till export-pending`.
        #[arg(long)]
        file: PathBuf,
    },
    /// Changes the hub acknowledged into quarantine, with the reason.
    #[command(subcommand)]
    Quarantine(QuarantineCmd),
    /// Sell in a loop, printing each receipt once it is committed (used by
    /// the crash test; not for shops).
    #[command(hide = true)]
    SellLoop {
        #[command(flatten)]
        data: Data,
        /// How many sales (0: until killed).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Print each sale's commit time in microseconds after its receipt.
        #[arg(long)]
        latency: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Create a till in an empty data folder.
    Init {
        #[command(flatten)]
        data: Data,
        /// Work without a hub (a standalone till).
        #[arg(long)]
        offline: bool,
        /// Load the sample catalogue, staff, customers and opening stock.
        #[arg(long)]
        sample: bool,
        /// A name for this till.
        #[arg(long)]
        name: Option<String>,
        /// Currency of a new standalone tenant (ISO code).
        #[arg(long)]
        currency: Option<String>,
        /// The hub's URL, e.g. https://hub.example:8443.
        #[arg(long)]
        hub: Option<String>,
        /// One-time enrolment code from `till hub enrol`.
        #[arg(long)]
        code: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        key: DbKeyArgs,
    },
    /// Join a hub with a standalone till, keeping its history.
    Attach {
        #[command(flatten)]
        data: Data,
        /// The hub's URL.
        #[arg(long)]
        hub: String,
        /// One-time enrolment code from `till hub enrol`.
        #[arg(long)]
        code: String,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        key: DbKeyArgs,
    },
    /// Rotate the database key (the till must be stopped). A plaintext
    /// database is encrypted. Default: a new random key in DIR/till.key.
    Rekey {
        #[command(flatten)]
        data: Data,
        /// Put the new random key in this new file (e.g. on removable media).
        #[arg(long, conflicts_with_all = ["new_passphrase_file", "new_passphrase_env"])]
        new_key_file: Option<PathBuf>,
        /// Derive the new key from the passphrase in this file.
        #[arg(long, conflicts_with = "new_passphrase_env")]
        new_passphrase_file: Option<PathBuf>,
        /// Derive the new key from the passphrase in $TILL_DB_PASSPHRASE.
        #[arg(long)]
        new_passphrase_env: bool,
    },
    /// Delete this till's data. Refused while changes have not reached the
    /// hub, unless --force (save them first with `till export-pending`).
    Reset {
        #[command(flatten)]
        data: Data,
        /// Delete even with unsynced changes (they are lost).
        #[arg(long)]
        force: bool,
    },
    /// Run the till's background sync (and, later, its UI) until stopped.
    Run {
        #[command(flatten)]
        data: Data,
        /// Seconds between sync rounds when nothing else triggers one
        /// (default: `sync.interval_s` from the config).
        #[arg(long)]
        interval: Option<u64>,
        /// Address of the local API and UI (default 127.0.0.1:8441; port 0 picks one).
        #[arg(long)]
        ui: Option<String>,
        /// Stop after this many seconds (0: run until Ctrl-C or SIGTERM).
        #[arg(long, default_value_t = 0)]
        exit_after: u64,
    },
}

/// How a new till's database is encrypted (SQLCipher). Default: a new
/// random 256-bit key in DIR/till.key (mode 0600).
#[derive(Args, Debug, Clone, Default)]
pub struct DbKeyArgs {
    /// Keep the database key in this file instead of DIR/till.key (e.g. on
    /// removable media); created with a random key if it does not exist.
    #[arg(long, conflicts_with_all = ["db_passphrase_file", "db_passphrase_env", "plaintext"])]
    pub key_file: Option<PathBuf>,
    /// Derive the database key from the passphrase in this file (read at
    /// every start; SQLCipher's PBKDF2 key derivation).
    #[arg(long, conflicts_with_all = ["db_passphrase_env", "plaintext"])]
    pub db_passphrase_file: Option<PathBuf>,
    /// Derive the database key from the passphrase in $TILL_DB_PASSPHRASE
    /// (which every command then needs).
    #[arg(long, conflicts_with = "plaintext")]
    pub db_passphrase_env: bool,
    /// Do not encrypt the database (not recommended: sales, customers and
    /// the device token are then readable by anyone who copies the folder).
    #[arg(long)]
    pub plaintext: bool,
}

impl DbKeyArgs {
    pub fn spec(&self) -> tillsync_store::keys::KeySpec {
        use tillsync_store::keys::KeySpec;
        if let Some(f) = &self.key_file {
            KeySpec::KeyFile(f.clone())
        } else if let Some(f) = &self.db_passphrase_file {
            KeySpec::PassphraseFile(f.clone())
        } else if self.db_passphrase_env {
            KeySpec::PassphraseEnv
        } else if self.plaintext {
            KeySpec::Plaintext
        } else {
            KeySpec::Folder
        }
    }
}

/// How to trust the hub.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM file with the hub's CA (or self-signed) certificate, instead of
    /// the system roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Allow plain HTTP to a hub that is not on this machine.
    #[arg(long)]
    pub insecure: bool,
}

/// Where the hub keeps its data: a folder (SQLite, one hub process) or a
/// PostgreSQL database (any number of hub processes). Exactly one.
#[derive(Args, Debug, Clone)]
pub struct HubData {
    /// The hub's data folder (SQLite).
    #[arg(long, env = "TILL_HUB_DATA")]
    pub data: Option<PathBuf>,
    /// The hub's PostgreSQL database, e.g. postgres://hub@127.0.0.1:5432/tillsync
    /// (no TLS: loopback or a private network).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Folder for the tills' backups kept by the hub (default: DATA/backups;
    /// a PostgreSQL hub keeps none without it: give every process the same,
    /// shared folder).
    #[arg(long, env = "TILL_HUB_BACKUPS")]
    pub backups: Option<PathBuf>,
    /// PostgreSQL: most connections in this process's pool.
    #[arg(long, default_value_t = 16)]
    pub pool_len_max: u32,
    /// PostgreSQL: longest wait for a pooled connection before a request
    /// fails with 503, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub acquire_timeout_ms: u64,
}

/// Limits of `till hub serve` against slow, idle and flooding clients.
#[derive(Args, Debug, Clone)]
pub struct ServeLimits {
    /// Longest a client may take to send a request's headers, and longest an
    /// idle keep-alive connection is kept waiting for its next request, in
    /// milliseconds (0: no limit).
    #[arg(long, default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Sustained requests per second allowed per device, per admin token and
    /// per client address on routes without a token (0: no rate limit).
    #[arg(long, default_value_t = 100)]
    pub rate_per_s: u32,
    /// Requests a caller may send at once after a quiet spell.
    #[arg(long, default_value_t = 1_000)]
    pub rate_burst_len: u32,
}

#[derive(Subcommand, Debug)]
pub enum HubCmd {
    /// Serve the hub's API.
    Serve {
        #[command(flatten)]
        data: HubData,
        /// Address to listen on (port 0 picks a free one; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8440")]
        listen: String,
        /// Serve Prometheus metrics on this separate address (e.g. 127.0.0.1:9440).
        #[arg(long)]
        metrics: Option<String>,
        /// PEM certificate chain for HTTPS.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for HTTPS.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[command(flatten)]
        limits: ServeLimits,
    },
    /// Tenants (merchants).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Stores of a tenant.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Make a one-time enrolment code for a new till of a store.
    Enrol {
        #[command(flatten)]
        data: HubData,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        store: String,
        /// Hours the code stays valid.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
    /// Conflict policies of a tenant.
    #[command(subcommand)]
    Policy(HubPolicyCmd),
    /// A tenant's usage: changes and bytes stored, devices, quarantine.
    Usage {
        #[command(flatten)]
        data: HubData,
        #[arg(long)]
        tenant: String,
    },
    /// Quotas of a tenant: catalogue and telemetry changes (sales are never
    /// refused) and backup storage.
    Quota {
        #[command(flatten)]
        data: HubData,
        #[arg(long)]
        tenant: String,
        /// Most catalogue and telemetry changes stored (0: no quota).
        #[arg(long)]
        changes: Option<u64>,
        /// Most bytes of backups kept for the tenant's tills (0: no quota).
        #[arg(long)]
        backup_bytes: Option<u64>,
    },
    /// Compact a tenant's change log, keeping the newest entries; tills
    /// behind the horizon bootstrap again (heads and tombstones are kept).
    Compact {
        #[command(flatten)]
        data: HubData,
        #[arg(long)]
        tenant: String,
        /// Log entries to keep.
        #[arg(long, default_value_t = 100_000)]
        keep: u64,
    },
    /// The hub's state digest of a store (compare with `till status`).
    Digest {
        #[command(flatten)]
        data: HubData,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        store: String,
    },
    /// Rebuild a store's till state as it was at a moment (hub receive
    /// time) from the change log, into a new read-only till folder.
    Export {
        #[command(flatten)]
        data: HubData,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        store: String,
        /// The moment: RFC 3339 (2025-03-01T17:30:00Z, or with an offset) or milliseconds since the epoch.
        #[arg(long)]
        at: String,
        /// The new folder (must not exist); open it with `till status|sales list|report --data DIR`.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        key: DbKeyArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant; prints its id and admin token (shown once).
    Create {
        #[command(flatten)]
        data: HubData,
        name: String,
        /// Seed the sample catalogue (and each new store's opening stock).
        #[arg(long)]
        sample: bool,
    },
    /// Give a tenant a new admin token (for a lost or leaked one); the old
    /// one stops working at once (this command uses the new one once).
    /// Prints the new token (shown once).
    RotateAdmin {
        #[command(flatten)]
        data: HubData,
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Create a store of a tenant.
    Create {
        #[command(flatten)]
        data: HubData,
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum HubPolicyCmd {
    /// Set the policy of TABLE or TABLE.FIELD to lww, first or manual.
    Set {
        #[command(flatten)]
        data: HubData,
        #[arg(long)]
        tenant: String,
        target: String,
        mode: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The hub's URL.
    #[arg(long)]
    pub hub: String,
    /// The tenant's admin token.
    #[arg(long, env = "TILL_ADMIN_TOKEN")]
    pub token: String,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Subcommand, Debug)]
pub enum DevicesCmd {
    /// List the tenant's devices.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a device: it gets 401 at once.
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        /// The device id.
        device: String,
    },
    /// Give this till a new device token from its hub (authenticated with
    /// the current one) and keep it where the current one is kept; the
    /// command then uses the new token once, which retires the old one.
    Rotate {
        #[command(flatten)]
        data: Data,
    },
    /// Give the tenant a new admin token; the one given stops working when
    /// the new one is first used, which this command does at once (so an
    /// answer lost on the way leaves the old one working). Prints the new
    /// token (shown once).
    RotateAdmin {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How a backup is locked or unlocked.
#[derive(Args, Debug, Clone, Default)]
pub struct BackupKeyArgs {
    /// File holding the passphrase.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// age recipient to encrypt to (create only).
    #[arg(long)]
    pub recipient: Option<String>,
    /// age identity file to decrypt with (verify, restore).
    #[arg(long)]
    pub identity: Option<PathBuf>,
}

/// How to reach S3-compatible storage (for `s3://` destinations). Unset
/// flags come from the till's config (`backup.s3_endpoint`,
/// `backup.s3_region`), then from `AWS_ENDPOINT_URL` and `AWS_REGION` /
/// `AWS_DEFAULT_REGION`; the keys always come from `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// S3 endpoint URL for S3-compatible servers, e.g. https://s3.example.net (default: AWS).
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: us-east-1).
    #[arg(long)]
    pub s3_region: Option<String>,
    /// With `hub` as the destination, on the till: its data folder (its hub and device token).
    #[arg(long)]
    pub till: Option<PathBuf>,
    /// With `--from hub` once the till is gone: the hub's URL (with --token, the admin token).
    #[arg(long)]
    pub hub: Option<String>,
    /// With `--from hub --hub URL`: the tenant's admin token.
    #[arg(long, env = "TILL_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With `--from hub --hub URL`: only this device's backups.
    #[arg(long)]
    pub device: Option<String>,
    /// With `--from hub --hub URL`: PEM file with the hub's CA certificate.
    #[arg(long)]
    pub hub_ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Back up a till while it keeps selling.
    Create {
        #[command(flatten)]
        data: Data,
        /// A folder or s3://BUCKET/PREFIX (default: backup.destination from the config).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        key: BackupKeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// List the backups at a destination, oldest first.
    List {
        /// A folder or s3://BUCKET/PREFIX.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Download, decrypt and check a backup (digests and SQLite integrity).
    Verify {
        /// A folder or s3://BUCKET/PREFIX.
        #[arg(long)]
        from: String,
        /// Backup id (default: the newest).
        id: Option<String>,
        #[command(flatten)]
        key: BackupKeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Keep only the newest N backups.
    Prune {
        /// A folder or s3://BUCKET/PREFIX.
        #[arg(long)]
        from: String,
        /// How many backups to keep (at least 1).
        #[arg(long)]
        keep: usize,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Rebuild a till from a backup into a new folder.
    Restore {
        /// A folder or s3://BUCKET/PREFIX.
        #[arg(long)]
        from: String,
        /// Backup id (default: the newest).
        id: Option<String>,
        /// The new till folder (must not hold a till).
        #[arg(long)]
        into: PathBuf,
        #[command(flatten)]
        key: BackupKeyArgs,
        /// Enrolment code: a till of a hub comes back as a new device.
        #[arg(long)]
        code: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        s3: S3Args,
        /// The restored till's database key (a new one: the lost till's key is not needed).
        #[command(flatten)]
        db_key: DbKeyArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print one setting, or all of them without KEY.
    Get {
        #[command(flatten)]
        data: Data,
        key: Option<String>,
    },
    /// Change one setting (validated before it is written).
    Set {
        #[command(flatten)]
        data: Data,
        key: String,
        value: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum QuarantineCmd {
    /// List quarantined changes of this till.
    List {
        #[command(flatten)]
        data: Data,
    },
}

#[derive(Args, Debug)]
pub struct ProductFieldsArgs {
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Price as a decimal, e.g. 4.50.
    #[arg(long)]
    pub price: Option<String>,
    /// Tax: a rate in percent (20, 5.5) or a tax code (std).
    #[arg(long)]
    pub tax: Option<String>,
    /// Category name.
    #[arg(long)]
    pub category: Option<String>,
    /// Barcode (EAN/UPC digits).
    #[arg(long)]
    pub barcode: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ProductCmd {
    /// Add a product.
    Add {
        #[command(flatten)]
        data: Data,
        /// Stock keeping unit: the product's key, the same on every till.
        #[arg(long)]
        sku: String,
        #[command(flatten)]
        fields: ProductFieldsArgs,
    },
    /// Change fields of a product.
    Update {
        #[command(flatten)]
        data: Data,
        #[arg(long)]
        sku: String,
        #[command(flatten)]
        fields: ProductFieldsArgs,
        /// Take the product off sale (false) or back on (true).
        #[arg(long)]
        active: Option<bool>,
    },
    /// Delete a product.
    Delete {
        #[command(flatten)]
        data: Data,
        #[arg(long)]
        sku: String,
    },
    /// List products.
    List {
        #[command(flatten)]
        data: Data,
    },
    /// Show one product with its stock.
    Show {
        #[command(flatten)]
        data: Data,
        #[arg(long)]
        sku: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum StockCmd {
    /// Receive stock.
    Receive {
        #[command(flatten)]
        data: Data,
        #[arg(long)]
        sku: String,
        #[arg(long)]
        qty: String,
    },
    /// Record a stock count.
    Count {
        #[command(flatten)]
        data: Data,
        #[arg(long)]
        sku: String,
        #[arg(long)]
        qty: String,
    },
    /// Stock on hand of every product (negative means oversold).
    List {
        #[command(flatten)]
        data: Data,
    },
}

#[derive(Subcommand, Debug)]
pub enum CustomerCmd {
    /// Add a customer.
    Add {
        #[command(flatten)]
        data: Data,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        phone: Option<String>,
    },
    /// List customers with loyalty points.
    List {
        #[command(flatten)]
        data: Data,
    },
}

#[derive(Subcommand, Debug)]
pub enum StaffCmd {
    /// Add a staff member.
    Add {
        #[command(flatten)]
        data: Data,
        #[arg(long)]
        name: String,
        /// cashier or manager.
        #[arg(long, default_value = "cashier")]
        role: String,
        /// 4 to 8 digits; stored only as a slow hash.
        #[arg(long)]
        pin: String,
    },
    /// List staff.
    List {
        #[command(flatten)]
        data: Data,
    },
}

#[derive(Args, Debug)]
pub struct SaleArgs {
    #[command(flatten)]
    pub data: Data,
    /// An item as SKU or SKU:QTY (repeat for more lines).
    #[arg(long = "item", required = true)]
    pub items: Vec<String>,
    /// A payment as cash, card, cash:AMOUNT or card:AMOUNT (repeat to split
    /// tender); a payment without an amount takes the rest.
    #[arg(long = "pay", required = true)]
    pub pays: Vec<String>,
    /// Customer id (see `till customer list`).
    #[arg(long)]
    pub customer: Option<String>,
    /// Cashier (name or id).
    #[arg(long)]
    pub staff: Option<String>,
    /// Card brand for card payments (e.g. visa).
    #[arg(long = "card-brand")]
    pub card_brand: Option<String>,
    /// Last four digits of the card (never the full number).
    #[arg(long = "card-last4")]
    pub card_last4: Option<String>,
    /// Discount in percent on every line.
    #[arg(long)]
    pub discount: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum SalesCmd {
    /// List sales, newest first.
    List {
        #[command(flatten)]
        data: Data,
        /// Most sales to list.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Show one sale's receipt.
    Show {
        #[command(flatten)]
        data: Data,
        /// Receipt number.
        receipt: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConflictsCmd {
    /// List conflicts (auto, open and resolved).
    List {
        #[command(flatten)]
        data: Data,
    },
    /// Resolve a conflict.
    Resolve {
        #[command(flatten)]
        data: Data,
        /// Conflict id (or a unique prefix).
        id: String,
        /// local (this till's value), remote (the other) or value=V.
        #[arg(long)]
        keep: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SettingsCmd {
    /// Show the tenant settings.
    Show {
        #[command(flatten)]
        data: Data,
    },
    /// Set one setting: currency, prices_include_tax, cash_rounding,
    /// time_zone or receipt_header.
    Set {
        #[command(flatten)]
        data: Data,
        key: String,
        value: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Set the policy of TABLE or TABLE.FIELD to lww, first or manual.
    Set {
        #[command(flatten)]
        data: Data,
        target: String,
        mode: String,
    },
}
