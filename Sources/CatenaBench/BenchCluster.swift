import CatenaClient
import CatenaCluster
import CatenaCore
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The cluster benchmarks' common ground: a cluster of real `catena` processes on 127.0.0.1
/// (ephemeral ports) in a fresh directory, its clients, and the few loopback and file-system
/// probes they take measurements with.
enum BenchCluster {
    /// Writes a topology of `nodes` nodes (`n1` head ... `nN` tail) into a fresh `directory`,
    /// starts it with ``LocalCluster``, runs `body`, then stops every process — also when `body`
    /// or the start throws — and removes the directory.
    static func with<R: Sendable>(
        executable: String, directory: String, nodes: Int, heartbeat: HeartbeatSettings? = nil, logLevel: String = "warning",
        nodeArguments: [String] = [], _ body: (LocalCluster) async throws(CatenaError) -> R
    ) async throws(CatenaError) -> R {
        try? FileManager.default.removeItem(atPath: directory)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw CatenaError(.ioFailure, "cannot create \(directory): \(error)")
        }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var yaml = "version: 1\ncluster: \(clusterID)\nmaster:\n  listen: 127.0.0.1:0\n  data: \(directory)/master\n"
        if let heartbeat {
            yaml += "heartbeat:\n  interval_ms: \(heartbeat.intervalMilliseconds)\n  timeout_ms: \(heartbeat.timeoutMilliseconds)\n"
        }
        yaml += "nodes:\n"
        for i in 1...nodes { yaml += "  - id: n\(i)\n    listen: 127.0.0.1:0\n    data: \(directory)/n\(i)\n" }
        let topology = directory + "/topology.yaml"
        do {
            try Data(yaml.utf8).write(to: URL(fileURLWithPath: topology))
        } catch {
            throw CatenaError(.ioFailure, "cannot write \(topology): \(error)")
        }
        let cluster = try await LocalCluster.start(executable: executable, topologyPath: topology, logLevel: logLevel,
                                                 nodeArguments: nodeArguments)
        let outcome = await Result.catching { () async throws(CatenaError) -> R in try await body(cluster) }
        await cluster.stop()
        return try outcome.get()
    }

    /// The cluster id of benchmark clusters.
    static let clusterID = "bench"

    /// `count` clients of `cluster`, each with its own connections, logging errors only. On
    /// failure the ones already connected are closed.
    static func clients(_ count: Int, of cluster: LocalCluster, configuration: CatenaClient.Configuration) async throws(CatenaError) -> [CatenaClient] {
        let quiet = Logger.benchmark(level: .error)
        var clients: [CatenaClient] = []
        do throws(CatenaError) {
            for _ in 0..<count {
                let client = try CatenaClient(masters: [cluster.masterAddress.description], configuration: configuration, logger: quiet)
                clients.append(client)
                // The chain is fetched before the measurement, not by its first put.
                try await client.connect()
            }
        } catch {
            for c in clients { await c.close() }
            throw error
        }
        return clients
    }

    /// A free TCP port on 127.0.0.1, as the kernel picks one for a socket bound to port 0 (then
    /// closed; another process could take it before it is used, which a benchmark can live with).
    static func freeLoopbackPort() throws(CatenaError) -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw CatenaError(.unavailable, "socket: errno \(errno)") }
        defer { close(fd) }
        var address = loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw CatenaError(.unavailable, "bind 127.0.0.1:0: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw CatenaError(.unavailable, "getsockname: errno \(errno)") }
        return UInt16(bigEndian: address.sin_port)
    }

    /// Waits until something accepts TCP connections on 127.0.0.1:`port`.
    static func waitUntilAccepting(port: UInt16, timeout: Duration) async throws(CatenaError) {
        let deadline = ContinuousClock.now + timeout
        while true {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw CatenaError(.unavailable, "socket: errno \(errno)") }
            var address = loopback(port: port)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            close(fd)
            if connected == 0 { return }
            guard ContinuousClock.now < deadline else {
                throw CatenaError(.timeout, "nothing accepted connections on 127.0.0.1:\(port) within \(timeout)")
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }

    /// Bytes of the regular files directly in `directory` (a data directory: segments, hints,
    /// state); 0 if it does not exist.
    static func bytes(in directory: String) -> Int {
        guard let dir = opendir(directory) else { return 0 }
        defer { closedir(dir) }
        var total = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            var st = stat()
            if stat(directory + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { total += Int(st.st_size) }
        }
        return total
    }
}

/// Benchmark values: each a different mix of `size / 2` pseudo-random bytes (a generator seeded
/// with the value's index, so they do not compress) followed by repeated English text naming the
/// index (which LZ4 shrinks to almost nothing) — about 2:1 for LZ4 overall.
struct MixedValues: Sendable {
    /// Bytes per value.
    let size: Int
    private let text: [UInt8]

    init(size: Int) {
        self.size = size
        let line = Array("catena benchmark value: the quick brown fox jumps over the lazy dog, 0123456789.\n".utf8)
        var text: [UInt8] = []
        text.reserveCapacity(size - size / 2)
        while text.count < size - size / 2 { text += line }
        self.text = Array(text.prefix(size - size / 2))
    }

    /// The value with index `index`.
    func value(_ index: Int) -> [UInt8] {
        var value = [UInt8](repeating: 0, count: size)
        var rng = SplitMix64(seed: UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15 &+ 1)
        let random = size / 2
        value.withUnsafeMutableBytes { raw in
            var i = 0
            while i + 8 <= random {
                raw.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self)
                i += 8
            }
            while i < random {
                raw[i] = UInt8(truncatingIfNeeded: rng.next())
                i += 1
            }
            for (j, byte) in text.enumerated() { raw[random + j] = byte }
            // The index in the text half too, so no two values share it.
            withUnsafeBytes(of: UInt64(truncatingIfNeeded: index).littleEndian) { stamp in
                for j in 0..<Swift.min(8, size - random) { raw[random + j] = stamp[j] }
            }
        }
        return value
    }
}

/// Milliseconds in a `Duration`, as a `Double`.
func milliseconds(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1e3 + Double(d.components.attoseconds) / 1e15
}

extension Logger {
    /// The benchmarks' logger (label `catena.bench`), at `level`.
    static func benchmark(level: Logger.Level) -> Logger {
        var logger = Logger(label: "catena.bench")
        logger.logLevel = level
        return logger
    }
}
