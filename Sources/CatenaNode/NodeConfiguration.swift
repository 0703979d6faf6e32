import CatenaCore
import CatenaNetwork
import CatenaStorage

/// Everything a storage node needs to run. Defaults suit a local cluster.
public struct NodeConfiguration: Sendable {
    /// This node's id (as in the topology).
    public var id: NodeID
    /// The cluster; peers of other clusters are refused.
    public var clusterID: String
    /// Where to listen; port 0 picks a free port.
    public var listen: Address
    /// The address announced to the master and peers; nil: the bound address.
    public var advertise: Address?
    /// Where to serve Prometheus metrics (`GET /metrics`); nil: nowhere.
    public var metrics: Address?
    /// The master(s); the node tries them in turn.
    public var masters: [Address]
    /// The local store (data directory, durability, limits). A node's store waits
    /// ``defaultGroupCommitDelay`` for more appends before it writes a batch of two or more.
    public var store: StoreConfiguration
    /// The node's default ``StoreConfiguration/groupCommitDelay``: 400 µs. In a chain every put
    /// waits for an fsync at each node in turn, so with a fixed number of puts in flight few
    /// share each fsync; waiting a little gathers more (docs/PERFORMANCE.md, "Small writes").
    public static let defaultGroupCommitDelay = Duration.microseconds(400)
    /// How often the node heartbeats the master (and so learns configuration changes).
    public var heartbeatInterval: Duration = .milliseconds(100)
    /// Bytes of writes the head holds uncommitted (in its log, in flight down the chain, not yet
    /// acknowledged by the tail) before new writes wait: the memory bound on a slow chain.
    public var maxUncommittedBytes: Int = 16 << 20
    /// The largest batch of records in one replication frame.
    public var maxReplicationBatchBytes: Int = 1 << 20
    /// Requests one client connection may have in progress; further requests wait unread
    /// (TCP backpressure). Their bytes are bounded too, by ``connectionLimits``.
    public var maxRequestsPerConnection: Int = 128
    /// Frame size and handshake limits, and what the node's listener holds for its peers: at
    /// most 1,024 client connections (plus 64 for nodes), client connections idle for 5 minutes
    /// closed, 64 MiB of requests in progress per client connection and 256 MiB per node (see
    /// ``ConnectionLimits``). The frame limit also bounds writes: the head refuses a write whose
    /// record the chain's frames could not carry (`WriteLimits`); every node of a chain should
    /// use the same frame limit.
    public var connectionLimits = ConnectionLimits()
    /// The largest piece of an object's bytes in one reply frame.
    public var readPieceSize: Int = 1 << 20
    /// Whether a (re)joining node asks the tail for LZ4-compressed catch-up chunks.
    public var catchUpCompression = true
    /// The most bytes per second a (re)joining node copies from the tail (nil: no bound), for
    /// its first minute of copying; then it copies at full speed, since a copy slower than the
    /// chain's writes would never catch up. The copy competes with the chain's own writes on the
    /// tail's and the joiner's disks and CPUs.
    public var catchUpBytesPerSecond: Int? = 300_000_000
    /// When the node raises its store's commit watermark and compacts (``CompactionScheduler``).
    /// The request-id window compaction keeps is ``StoreConfiguration/requestWindow`` in ``store``.
    public var compaction = CompactionSettings()

    /// The clock leases are counted on (monotonic). Tests pass one they advance by hand.
    public var clock: any NodeClock = SystemNodeClock()

    /// Creates a configuration.
    public init(id: NodeID, clusterID: String, listen: Address, advertise: Address? = nil, masters: [Address], dataDirectory: String) {
        self.id = id
        self.clusterID = clusterID
        self.listen = listen
        self.advertise = advertise
        self.masters = masters
        self.store = StoreConfiguration(directory: dataDirectory, clusterID: clusterID, nodeID: id.rawValue)
        self.store.groupCommitDelay = Self.defaultGroupCommitDelay
    }
}
