import ArgumentParser
import CatenaClient
import CatenaCluster
import CatenaCore
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `catena up`: a whole local cluster in one command.
struct Up: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start the master and every node of a topology; stop them all on Ctrl-C.",
        discussion: """
            Starts each process as a child, waits until the chain accepts writes (it writes and \
            deletes the key '.catena-up-probe'), prints every address, and runs until Ctrl-C or \
            SIGTERM, then stops the nodes and the master gracefully. The children exit by \
            themselves if this process dies.
            """
    )

    @Option(name: .long, help: "The topology file.") var topology: String = "topology/local.yaml"
    @Option(name: .long, help: "The children's log level.") var logLevel: String = "warning"

    func run() async throws {
        let topologyFile = try Topology.load(path: topology)
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        announce("starting cluster '\(topologyFile.clusterID)' from \(topology): master and \(topologyFile.nodes.count) node(s)")
        let cluster = try await LocalCluster.start(executable: executable, topologyPath: topology, logLevel: logLevel)
        let stopped = Stopped()
        try await runUntilSignalled(logger: Logger(label: "catena.up")) {
            do {
                try await Up.waitUntilWritable(cluster)
            } catch {
                writeStandardError("catena up: the chain did not accept writes: \(error)")
                stopped.failed = true
                return
            }
            announce("master  \(cluster.masterAddress)")
            let chain = (try? await Up.chain(cluster)) ?? nil
            for member in chain?.members ?? [] {
                let role = chain?.role(of: member.id).map { "\($0)" } ?? ""
                announce("node    \(member.id)  \(member.address)  \(role)")
            }
            announce("ready: the chain accepts writes. Try, from another terminal:")
            let me = CommandLine.arguments[0]
            announce("  \(me) put hello README.md && \(me) get hello")
            announce("Ctrl-C stops the cluster.")
            // Report children that exit on their own while we run.
            var reported: Set<String> = []
            while !Task.isCancelled {
                for child in cluster.children where !reported.contains(child.name) && !cluster.isRunning(child.name) {
                    reported.insert(child.name)
                    writeStandardError("catena up: \(child.name) (pid \(child.pid)) exited")
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        announce("stopping the cluster")
        await cluster.stop(timeout: .seconds(10))
        announce("stopped")
        if stopped.failed { throw ExitCode(1) }
    }

    /// The chain's configuration from the master.
    static func chain(_ cluster: LocalCluster) async throws -> ChainConfiguration? {
        let client = try CatenaClient(masters: [cluster.masterAddress.description], logger: quietLogger())
        defer { Task { await client.close() } }
        try await client.connect()
        return client.chainConfiguration
    }

    /// Writes and deletes a probe key until both succeed (30 s at most).
    static func waitUntilWritable(_ cluster: LocalCluster) async throws {
        var configuration = CatenaClient.Configuration()
        configuration.requestTimeout = .seconds(30)
        configuration.name = "catena-up"
        let client = try CatenaClient(masters: [cluster.masterAddress.description], configuration: configuration, logger: quietLogger())
        defer { Task { await client.close() } }
        try await client.put(".catena-up-probe", Array("up".utf8))
        try await client.delete(".catena-up-probe")
    }

    static func quietLogger() -> Logger {
        var logger = Logger(label: "catena.up")
        logger.logLevel = .error
        return logger
    }
}

/// Whether `up` failed, set from its serving task.
final class Stopped: @unchecked Sendable {
    // Written once by the serving task before it returns; read after it has returned.
    var failed = false
}
