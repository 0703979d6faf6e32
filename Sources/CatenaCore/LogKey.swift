/// Logger metadata keys, in one place.
public enum LogKey {
    /// The data directory.
    public static let directory = "catena_dir"
    /// An LSN.
    public static let lsn = "catena_lsn"
    /// A node id.
    public static let node = "catena_node"
    /// A configuration epoch.
    public static let epoch = "catena_epoch"
    /// The node's role in the chain.
    public static let role = "catena_role"
    /// A network address.
    public static let address = "catena_address"
    /// The other end of a connection.
    public static let peer = "catena_peer"
    /// A file path.
    public static let path = "catena_path"
    /// How long something did not run, in milliseconds (the master's own pause).
    public static let pauseMilliseconds = "catena_pause_ms"
    /// The configuration epoch a node runs, as it reported it.
    public static let nodeEpoch = "catena_node_epoch"
    /// Bytes compaction could give back now (the store's garbage estimate).
    public static let collectableBytes = "catena_collectable_bytes"
    /// Bytes of the log's sealed segments.
    public static let sealedBytes = "catena_sealed_bytes"
}
