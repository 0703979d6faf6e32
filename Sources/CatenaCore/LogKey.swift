/// Every logger metadata key Catena uses, in one place: each is `catena_` and snake_case, with
/// its unit in the name where it has one. A log line's metadata is built from these only:
/// `logger.info("…", metadata: .catena([.epoch: "\(epoch)", .path: "\(path)"]))`, and a
/// logger's own metadata is set with `logger[metadataKey: LogKey.node.rawValue]`. `tools/test.sh`
/// refuses a string-literal key in `Sources`; docs/ARCHITECTURE.md ("Logs") lists every case.
public enum LogKey: String, CaseIterable, Sendable {
    // Where: the process, its peers and files.

    /// The node's id (a logger's own metadata on a node).
    case node = "catena_node"
    /// A network address, HOST:PORT, something listens on.
    case address = "catena_address"
    /// The other end of a connection (its role, id and address, as far as known).
    case peer = "catena_peer"
    /// The store's data directory.
    case directory = "catena_dir"
    /// A file path (or a file's name inside the data directory).
    case path = "catena_path"
    /// A log segment's id.
    case segment = "catena_segment"
    /// A byte offset in a file.
    case offset = "catena_offset"
    /// An object's key.
    case key = "catena_key"
    /// The kind of a request a node answered (a frame type: get, head, list, copy, scrub, …).
    case request = "catena_request"

    // The chain and its configuration.

    /// A configuration epoch (the one the line is about: new, stored or running).
    case epoch = "catena_epoch"
    /// The epoch a configuration replaced.
    case previousEpoch = "catena_previous_epoch"
    /// The configuration epoch a node runs, as it reported it.
    case nodeEpoch = "catena_node_epoch"
    /// The node's role in the chain.
    case role = "catena_role"
    /// A configuration's members, head first (node ids).
    case members = "catena_members"
    /// The members a new configuration added (node ids).
    case added = "catena_added"
    /// The members a new configuration removed (node ids).
    case removed = "catena_removed"
    /// The standbys: nodes known to the master that are not in the chain (node ids).
    case standbys = "catena_standbys"
    /// Members that may still lack writes committed before they joined (node ids).
    case catchingUp = "catena_catching_up"
    /// The members in the master's saved state, which it runs (node ids).
    case savedMembers = "catena_saved_members"
    /// The members the topology file names, which the saved state overrides (node ids).
    case topologyMembers = "catena_topology_members"
    /// The first seq of an epoch (`?` while unknown).
    case firstSeq = "catena_first_seq"

    // The log.

    /// An LSN (epoch.seq): the one the line is about.
    case lsn = "catena_lsn"
    /// The LSN of the record before the one the line is about.
    case previousLSN = "catena_previous_lsn"
    /// A range of the log starts after this LSN (exclusive).
    case afterLSN = "catena_after_lsn"
    /// A range of the log ends at this LSN (inclusive).
    case throughLSN = "catena_through_lsn"
    /// Records a truncation or recovery removed from the log.
    case recordsRemoved = "catena_records_removed"
    /// Records compaction left out (deleted or overwritten objects' old versions).
    case recordsDropped = "catena_records_dropped"
    /// Records a catching-up node still lacks, by its source's last reported end.
    case lagRecords = "catena_lag_records"
    /// Segments in the log.
    case segments = "catena_segments"
    /// Segments a compaction rewrote.
    case segmentsRewritten = "catena_segments_rewritten"
    /// Keys in the store's index.
    case keys = "catena_keys"
    /// A segment file's size, in bytes.
    case segmentBytes = "catena_segment_bytes"
    /// Bytes cut from the end of a segment (a torn write or an unwritten, zero-filled end).
    case bytesDropped = "catena_bytes_dropped"
    /// Bytes of the segments a compaction rewrote, before it.
    case bytesBefore = "catena_bytes_before"
    /// Bytes of what a compaction wrote in their place.
    case bytesAfter = "catena_bytes_after"
    /// Bytes compaction could give back now (the store's garbage estimate).
    case collectableBytes = "catena_collectable_bytes"
    /// Bytes of the log's sealed segments.
    case sealedBytes = "catena_sealed_bytes"

    // What went wrong, and what happens next.

    /// The error (a `CatenaError`'s code and message, or another error's description).
    case error = "catena_error"
    /// A damaged stretch of the log: segment, offsets and what is wrong.
    case damage = "catena_damage"
    /// How many damaged stretches the store found when it opened.
    case damageCount = "catena_damage_count"
    /// How long something did not run, in milliseconds (the master's own pause).
    case pauseMilliseconds = "catena_pause_ms"
    /// How long before the next attempt, in milliseconds.
    case backoffMilliseconds = "catena_backoff_ms"
    /// Which attempt of a request this is, from 1.
    case attempt = "catena_attempt"
    /// A state machine's action, as the interpreter performs it.
    case action = "catena_action"
}

extension Dictionary where Key == String {
    /// Logger metadata (`Logger.Metadata` is `[String: Logger.MetadataValue]`) under Catena's
    /// keys: `metadata: .catena([.epoch: "\(epoch)"])`. A key given twice keeps its last value.
    public static func catena(_ pairs: KeyValuePairs<LogKey, Value>) -> Self {
        Dictionary(pairs.map { ($0.key.rawValue, $0.value) }, uniquingKeysWith: { _, last in last })
    }
}
