/// Every metric a Catena process exposes, in one place: its name, kind, labels and help.
///
/// Names follow Prometheus' conventions: a `catena_` prefix, base units spelled out at the end
/// (`_seconds`, `_bytes`, `_records`), `_total` on counters. Components record through
/// swift-metrics with these names; the process's registry takes the help text and the histogram
/// buckets from here, so the exposition carries them. `docs/ARCHITECTURE.md` shows the same
/// table for people (a test keeps the two equal).
public enum CatenaMetric: String, CaseIterable, Sendable {
    // Every process.
    case buildInfo = "catena_build_info"

    // Node: its place in the chain.
    case nodeInfo = "catena_node_info"
    case nodeEpoch = "catena_node_epoch"
    case nodeFailed = "catena_node_failed"
    case nodeLeaseRemaining = "catena_node_lease_remaining_seconds"
    case nodeJoining = "catena_node_joining"
    // Node: client requests.
    case requestDuration = "catena_node_request_duration_seconds"
    case requestErrors = "catena_node_request_errors_total"
    case writesCommitted = "catena_node_writes_committed_total"
    case writesRefused = "catena_node_writes_refused_total"
    case writesThrottled = "catena_node_writes_throttled_total"
    case uncommittedBytes = "catena_node_uncommitted_bytes"
    case uncommittedPeakBytes = "catena_node_uncommitted_peak_bytes"
    case staleConfigurationsRefused = "catena_node_stale_configurations_refused_total"
    case requestIDsForgottenEarly = "catena_node_request_ids_forgotten_early_total"
    // Node: replication.
    case replicationHop = "catena_node_replication_hop_seconds"
    case replicationLagRecords = "catena_node_replication_lag_records"
    case replicationLagBytes = "catena_node_replication_lag_bytes"
    case replicationLagSeconds = "catena_node_replication_lag_seconds"
    case sentRecords = "catena_node_sent_records"
    case recordsReplicated = "catena_node_records_replicated_total"
    case recordsTruncated = "catena_node_records_truncated_total"
    case lastAcceptedSeq = "catena_node_last_accepted_seq"
    case acknowledgedSeq = "catena_node_acknowledged_seq"
    // Node: catch-up.
    case catchUpRecords = "catena_node_catch_up_records_total"
    case catchUpBytes = "catena_node_catch_up_bytes_total"
    case catchUpWireBytes = "catena_node_catch_up_wire_bytes_total"
    case catchUpLagRecords = "catena_node_catch_up_lag_records"
    case catchUpSentBytes = "catena_node_catch_up_sent_bytes_total"
    case versionQueries = "catena_node_version_queries_total"
    // Node: the store.
    case fsyncDuration = "catena_store_fsync_seconds"
    case groupCommitDuration = "catena_store_group_commit_seconds"
    case groupCommitBytes = "catena_store_group_commit_bytes"
    case groupCommitRecords = "catena_store_group_commit_records"
    case appendedRecords = "catena_store_appended_records_total"
    case appendedBytes = "catena_store_appended_bytes_total"
    case durableSeq = "catena_store_durable_seq"
    case commitWatermarkSeq = "catena_store_commit_watermark_seq"
    case pendingAppendBytes = "catena_store_pending_append_bytes"
    case diskBytes = "catena_store_disk_bytes"
    case segments = "catena_store_segments"
    case segmentsSealed = "catena_store_segments_sealed_total"
    case damagedRanges = "catena_store_damaged_ranges"
    case sealedBytes = "catena_store_sealed_bytes"
    case garbageBytes = "catena_store_garbage_bytes"
    case collectableBytes = "catena_store_collectable_bytes"
    case compactions = "catena_store_compactions_total"
    case compactionFailures = "catena_store_compaction_failures_total"
    case compactionReclaimedBytes = "catena_store_compaction_reclaimed_bytes_total"
    case watermarkRaises = "catena_store_watermark_raises_total"

    // Node and master: the listener.
    case connections = "catena_server_connections"
    case clientConnections = "catena_server_client_connections"
    case connectionsRefused = "catena_server_connections_refused_total"
    case idleClosed = "catena_server_idle_closed_total"
    case requestsInProgressBytes = "catena_server_requests_in_progress_bytes"
    case requestsInProgressPeakBytes = "catena_server_requests_in_progress_peak_bytes"
    case connectionsWaiting = "catena_server_connections_waiting"

    // Master.
    case masterEpoch = "catena_master_epoch"
    case masterMembers = "catena_master_members"
    case chainAvailable = "catena_master_chain_available"
    case reconfigurations = "catena_master_reconfigurations_total"
    case failovers = "catena_master_failovers_total"
    case drains = "catena_master_drains_total"
    case joins = "catena_master_joins_total"
    case leasesReleased = "catena_master_leases_released_total"
    case memberHeartbeatAge = "catena_master_member_heartbeat_age_seconds"
    case memberHighestSeq = "catena_master_member_highest_seq"
    case memberLagRecords = "catena_master_member_lag_records"
    case memberHealthy = "catena_master_member_healthy"
    case stateStale = "catena_master_state_stale"
    case lastPause = "catena_master_last_pause_seconds"

    /// How a metric's values behave.
    public enum Kind: String, Sendable {
        /// Only goes up (from 0 when the process starts).
        case counter
        /// A value now.
        case gauge
        /// Observations counted in buckets, with their sum and count.
        case histogram
    }

    /// Which processes expose a metric.
    public enum Process: String, Sendable {
        case node, master, both = "node, master"
    }

    /// What the table says of one metric.
    public struct Entry: Sendable {
        public var kind: Kind
        public var process: Process
        public var labels: [String]
        public var help: String
    }

    /// The metric's name in the exposition.
    public var name: String { rawValue }

    public var kind: Kind { entry.kind }
    public var labels: [String] { entry.labels }
    public var help: String { entry.help }

    /// The upper bounds of a histogram's buckets, in the metric's unit: latencies from 50 µs to
    /// 10 s, sizes from 256 B to 64 MiB, record counts from 1 to 4096. Empty for other kinds.
    public var buckets: [Double] {
        guard kind == .histogram else { return [] }
        if rawValue.hasSuffix("_seconds") {
            return [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
        }
        if rawValue.hasSuffix("_bytes") { return (0...9).map { Double(256 << (2 * $0)) } }
        return (0...12).map { Double(1 << $0) }
    }

    public var entry: Entry {
        func d(_ kind: Kind, _ process: Process, _ help: String, labels: [String] = []) -> Entry {
            Entry(kind: kind, process: process, labels: labels, help: help)
        }
        return switch self {
        case .buildInfo: d(.gauge, .both, "The running build (value 1).", labels: ["version", "process"])
        case .nodeInfo: d(.gauge, .node, "This node's id and role (value 1).", labels: ["node", "role"])
        case .nodeEpoch: d(.gauge, .node, "The configuration epoch this node runs.")
        case .nodeFailed: d(.gauge, .node, "1 if the local log failed and the node stopped taking writes.")
        case .nodeLeaseRemaining: d(.gauge, .node, "Seconds of lease left from the master (0: none; the node serves no clients).")
        case .nodeJoining: d(.gauge, .node, "1 while the node is not a member and catches up from the tail.")
        case .requestDuration:
            d(.histogram, .node, "Client requests, from the frame read to the reply sent (writes: until committed).", labels: ["op"])
        case .requestErrors:
            d(.counter, .node, "Client requests answered with an error, by error code (op invalid: a write that could not be read).", labels: ["op", "code"])
        case .writesCommitted: d(.counter, .node, "Writes committed with this node as head.")
        case .writesRefused: d(.counter, .node, "Writes refused (redirect, invalid, busy, failure).")
        case .writesThrottled: d(.counter, .node, "Writes that waited under the uncommitted-bytes bound.")
        case .uncommittedBytes: d(.gauge, .node, "Bytes of writes taken at the head and not yet committed.")
        case .uncommittedPeakBytes: d(.gauge, .node, "The most uncommitted bytes so far.")
        case .staleConfigurationsRefused:
            d(.counter, .node, "Master configurations refused as older than one this node has seen (a master state restored from an old backup?).")
        case .requestIDsForgottenEarly:
            d(.counter, .node, "Request ids forgotten inside the request window because of the memory cap (their retries are not recognised).")
        case .replicationHop:
            d(.histogram, .node, "From forwarding records to the successor until it acknowledges them (every node after this one holds them durably).")
        case .replicationLagRecords: d(.gauge, .node, "Records accepted here and not yet acknowledged by the successor: forwarded, or not yet durable here (0 at the tail).")
        case .replicationLagBytes: d(.gauge, .node, "Bytes forwarded to the successor and not yet acknowledged.")
        case .replicationLagSeconds: d(.gauge, .node, "Age of the oldest record forwarded to the successor and not yet acknowledged.")
        case .sentRecords: d(.gauge, .node, "Records in the Sent list: forwarded, not yet acknowledged.")
        case .recordsReplicated: d(.counter, .node, "Records applied from the predecessor.")
        case .recordsTruncated: d(.counter, .node, "Records removed by truncations (writes the chain never committed, discarded logs).")
        case .lastAcceptedSeq: d(.gauge, .node, "Seq of the last record accepted into the local log.")
        case .acknowledgedSeq: d(.gauge, .node, "Seq through which this node acknowledged upstream (the head: committed).")
        case .catchUpRecords: d(.counter, .node, "Records copied from the tail while joining.")
        case .catchUpBytes: d(.counter, .node, "Bytes of records copied from the tail while joining.")
        case .catchUpWireBytes: d(.counter, .node, "Bytes received for them (LZ4-compressed chunks).")
        case .catchUpLagRecords: d(.gauge, .node, "Records the tail had that this node lacked at the last chunk.")
        case .catchUpSentBytes: d(.counter, .node, "Bytes of catch-up chunks this node sent to joining nodes (as the tail).")
        case .versionQueries: d(.counter, .node, "Reads of a key with a write in flight here that asked the tail which version is committed (CRAQ).")
        case .fsyncDuration: d(.histogram, .node, "fsyncs of group commits (segment files, and the directory when a segment was created).")
        case .groupCommitDuration: d(.histogram, .node, "Group commits, from the batch's write to its records being durable.")
        case .groupCommitBytes: d(.histogram, .node, "Bytes of records per group commit.")
        case .groupCommitRecords: d(.histogram, .node, "Records per group commit.")
        case .appendedRecords: d(.counter, .node, "Records made durable.")
        case .appendedBytes: d(.counter, .node, "Bytes of records made durable.")
        case .durableSeq: d(.gauge, .node, "Seq of the highest durable record.")
        case .commitWatermarkSeq: d(.gauge, .node, "Seq of the persisted commit watermark (on every replica; compaction may drop below it).")
        case .pendingAppendBytes: d(.gauge, .node, "Bytes enqueued in the store and not yet durable.")
        case .diskBytes: d(.gauge, .node, "Bytes of the log's segment files.")
        case .segments: d(.gauge, .node, "Segment files of the log.")
        case .segmentsSealed: d(.counter, .node, "Segments sealed.")
        case .damagedRanges: d(.gauge, .node, "Damaged stretches found in the log (never served).")
        case .sealedBytes: d(.gauge, .node, "Bytes of sealed segments.")
        case .garbageBytes: d(.gauge, .node, "Bytes of superseded versions and tombstones in sealed segments.")
        case .collectableBytes: d(.gauge, .node, "Garbage bytes compaction may give back now.")
        case .compactions: d(.counter, .node, "Compactions run by the scheduler.")
        case .compactionFailures: d(.counter, .node, "Compactions that failed.")
        case .compactionReclaimedBytes: d(.counter, .node, "Bytes compactions gave back.")
        case .watermarkRaises: d(.counter, .node, "Commit watermark raises persisted.")
        case .connections: d(.gauge, .both, "Connections open now (handshaking, clients and peers).")
        case .clientConnections: d(.gauge, .both, "Established client connections now.")
        case .connectionsRefused: d(.counter, .both, "Connections refused busy at the connection cap.")
        case .idleClosed: d(.counter, .both, "Client connections closed by the idle timeout.")
        case .requestsInProgressBytes: d(.gauge, .both, "Bytes of requests admitted and not yet answered.")
        case .requestsInProgressPeakBytes: d(.gauge, .both, "The most request bytes in progress so far.")
        case .connectionsWaiting: d(.gauge, .both, "Connections not read until request bytes are released.")
        case .masterEpoch: d(.gauge, .master, "The current configuration epoch.")
        case .masterMembers: d(.gauge, .master, "Members of the chain.")
        case .chainAvailable: d(.gauge, .master, "1 if a member known to hold every committed write is not failed.")
        case .reconfigurations: d(.counter, .master, "Configurations with a new epoch this master persisted.")
        case .failovers: d(.counter, .master, "Members this master removed from the chain as failed.")
        case .drains: d(.counter, .master, "Members this master removed because they were drained or removed by an operator.")
        case .joins: d(.counter, .master, "Nodes this master added to the chain as its new tail.")
        case .leasesReleased: d(.counter, .master, "Leaving members that said they hold no lease, so were removed without waiting for it to run out.")
        case .memberHeartbeatAge: d(.gauge, .master, "Seconds since the node's last heartbeat.", labels: ["node"])
        case .memberHighestSeq: d(.gauge, .master, "The highest durable seq the node reported.", labels: ["node"])
        case .memberLagRecords: d(.gauge, .master, "Records the node is behind the most advanced member.", labels: ["node"])
        case .memberHealthy: d(.gauge, .master, "1 if the node heartbeats on time and is a member.", labels: ["node"])
        case .stateStale:
            d(.gauge, .master, "1 if the master's state is older than the chain's (restored from an old backup?): it acts on nothing.")
        case .lastPause: d(.gauge, .master, "How long the master's own last pause lasted (0: none noticed).")
        }
    }
}
