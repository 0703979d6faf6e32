import CatenaClient
import CatenaCluster
import CatenaCore
import Foundation
import Logging

/// The cluster benchmarks' common ground: a cluster of real `catena` processes on 127.0.0.1
/// (ephemeral ports) in a fresh directory, and its clients.
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
        var quiet = Logger(label: "catena.bench")
        quiet.logLevel = .error
        var clients: [CatenaClient] = []
        do throws(CatenaError) {
            for _ in 0..<count {
                clients.append(try await CatenaClient(masters: [cluster.masterAddress.description], configuration: configuration, logger: quiet))
            }
        } catch {
            for c in clients { await c.close() }
            throw error
        }
        return clients
    }
}
