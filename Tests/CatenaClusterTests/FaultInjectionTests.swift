import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaWire
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension ProcessClusterSuites {
    /// Faults injected into real `catena` processes on 127.0.0.1 (DESIGN.md, "Invariants"): members
    /// SIGKILLed and restarted in turn, a head or a tail paused (SIGSTOP) past the failure timeout
    /// and resumed, a head killed while its log runs ahead of the rest of the chain — all under
    /// concurrent clients (eight, mostly) whose every operation is recorded. Then:
    /// the history is linearizable per key (3), every acknowledged write is in every replica's log
    /// and the final read of its key is it or later (1, 5), and the replicas' logs are identical (4).
    ///
    /// Heartbeats every 50 ms and a 500 ms failure timeout, so a failover takes well under a second.
    /// Set `CATENA_TEST_LOG_DIR` to keep the children's logs (info level), one file per test.
    @Suite("Fault injection")
    struct FaultInjectionTests {
        /// `nodes` `catena` processes heartbeating every 50 ms with a failure timeout of `timeout`
        /// ms. Nodes raise their commit watermark every 30 ms (5 s by default), so every failure
        /// here also checks that no node ever has to truncate below it.
        static func options(nodes: Int, name: String, timeoutMilliseconds timeout: Int = 500) -> TestCluster.Options {
            var options = TestCluster.Options(.processes, nodes: nodes)
            options.failureTimeout = .milliseconds(timeout)
            options.nodeArguments = ["--watermark-interval-ms", "30"]
            options.adminTimeout = .seconds(2)
            options.logName = name
            return options
        }

        @Test("SIGKILL the head, a middle and the tail in turn under 8 clients; each restarts and rejoins as tail",
              .timeLimit(.minutes(2)), arguments: zip([3, 5], [2, 1]))
        func killedMembersRejoin(nodes: Int, rounds: Int) async throws {
            try await withTestCluster(Self.options(nodes: nodes, name: "kill-\(nodes)")) { cluster in
                let load = try await Workload.start(cluster)
                for _ in 0..<rounds {
                    for role in [ChainRole.head, .middle, .tail] {
                        try await killAndRestart(role, in: cluster, load: load)
                    }
                }
                try await cluster.verify(load)
            }
        }

        /// With 3 clients the head comes back less than 256 records behind and the master appends
        /// it at once (its first heartbeat may report only a durable prefix of its log); with 8 it
        /// is further behind and catches up from the tail first.
        @Test("SIGSTOP the head with writes queued at it, past the timeout: it is replaced, none of its writes is acknowledged outside the new chain, it rejoins as tail",
              .timeLimit(.minutes(1)), arguments: [3, 8])
        func pausedHeadRejoins(clients: Int) async throws {
            try await pauseAndResume(.head, clients: clients)
        }

        @Test("SIGSTOP the tail under reads and writes, past the timeout: no stale read, it rejoins as tail",
              .timeLimit(.minutes(1)))
        func pausedTailRejoins() async throws {
            try await pauseAndResume(.tail, clients: 8)
        }

        /// The head's log runs ahead of the rest of the chain (its middle and tail are paused), a
        /// reconfiguration starts an epoch at the head's log end, and the head dies: the tail, the
        /// new head, has a shorter log than where that epoch started. It must still take writes
        /// (the records after its log's end never committed); the dead head's are truncated.
        @Test("SIGKILL the head right after a new epoch began above what the rest of the chain holds: the chain goes on",
              .timeLimit(.minutes(1)))
        func headKilledAheadOfItsChain() async throws {
            try await withTestCluster(Self.options(nodes: 3, name: "head-ahead", timeoutMilliseconds: 1000)) { cluster in
                let load = try await Workload.start(cluster)
                try await load.waitForProgress("the clients got going")
                let (head, middle, tail) = try await (cluster.member(at: .head), cluster.member(at: .middle), cluster.member(at: .tail))
                // The middle stops taking records; the tail stops a little later, before the master
                // declares the middle failed, so the head cannot pass its records on to it either.
                cluster.signal(middle, SIGSTOP)
                try await Task.sleep(for: cluster.failureTimeout * 0.4)
                cluster.signal(tail, SIGSTOP)
                try await cluster.waitForStatus("the master removed the paused \(middle)") { $0.role(of: middle) == nil }
                try await Task.sleep(for: .milliseconds(100))  // the head reports where the new epoch starts
                cluster.signal(head, SIGKILL)
                cluster.signal(tail, SIGCONT)
                cluster.signal(middle, SIGCONT)
                _ = await cluster.waitForExit(head, timeout: .seconds(5))
                try await cluster.waitForStatus("the master removed the killed \(head)") { $0.role(of: head) == nil }
                try await load.waitForProgress("writes went on without \(head)")
                try await cluster.startNode(head)
                try await cluster.waitForStatus("every node is a member again") { s in cluster.nodeIDs.allSatisfy { s.role(of: $0) != nil } }
                try await load.waitForProgress("writes went on with every node back")
                try await cluster.verify(load)
            }
        }

        /// The master itself stops for three failure timeouts while the chain serves 8 clients (whose
        /// operations fail once the leases run out) and heartbeats queue at its socket; resumed, it
        /// must not blame the members for its own silence (DESIGN.md invariant 7).
        @Test("SIGSTOP the master for three failure timeouts under 8 clients: no member is removed, the epoch stays",
              .timeLimit(.minutes(1)))
        func pausedMasterRemovesNobody() async throws {
            try await withTestCluster(Self.options(nodes: 3, name: "pause-master")) { cluster in
                let load = try await Workload.start(cluster)
                try await load.waitForProgress("the clients got going")
                let before = try await cluster.waitForStatus("every node is a healthy member") { $0.everyMemberIsHealthy(cluster.nodeIDs) }
                let paused = ContinuousClock.now
                cluster.signalMaster(SIGSTOP)
                try await Task.sleep(until: paused + cluster.failureTimeout * 3, clock: .continuous)
                cluster.signalMaster(SIGCONT)
                // Long enough for the queued heartbeats, the ticks after them, and a failure timeout
                // from the resume: any removal the pause caused would have been made by then.
                try await Task.sleep(for: cluster.failureTimeout * 3)
                let after = try await cluster.waitForStatus("every node is a healthy member again") { $0.everyMemberIsHealthy(cluster.nodeIDs) }
                #expect(after.epoch == before.epoch, "the master reconfigured after its own pause: \(before.summary) -> \(after.summary)")
                #expect(after.nodes.map(\.id) == before.nodes.map(\.id) && after.nodes.map(\.role) == before.nodes.map(\.role))
                try await load.waitForProgress("writes went on after the master's pause")
                try await cluster.verify(load)
            }
        }

        /// Pauses the member at `role` under load for three failure timeouts, then resumes it.
        private func pauseAndResume(_ role: ChainRole, clients: Int) async throws {
            try await withTestCluster(Self.options(nodes: 3, name: "pause-\(role)-\(clients)")) { cluster in
                let load = try await Workload.start(cluster, count: clients)
                try await load.waitForProgress("the clients got going")
                let victim = try await cluster.member(at: role)
                let paused = ContinuousClock.now
                cluster.signal(victim, SIGSTOP)
                try await cluster.waitForStatus("the master removed the paused \(role) \(victim)") { $0.role(of: victim) == nil }
                try await load.waitForProgress("writes went on without \(victim)")
                try await Task.sleep(until: paused + cluster.failureTimeout * 3, clock: .continuous)
                cluster.signal(victim, SIGCONT)
                let back = try await cluster.waitForStatus("\(victim) is a member again") { $0.role(of: victim) != nil }
                #expect(back.role(of: victim) == .tail, "\(victim) came back as \(String(describing: back.role(of: victim))), not as tail")
                try await load.waitForProgress("writes went on with \(victim) back")
                try await cluster.verify(load)
            }
        }

        /// SIGKILLs the member at `role`; once the master removed it and writes went on without it,
        /// restarts it on its data directory and waits until it is a member again — as the tail.
        private func killAndRestart(_ role: ChainRole, in cluster: TestCluster, load: Workload) async throws {
            let victim = try await cluster.member(at: role)
            try await cluster.kill(victim)
            try await cluster.waitForStatus("the master removed the killed \(role) \(victim)") { $0.role(of: victim) == nil }
            try await load.waitForProgress("writes went on without \(victim)")
            try await cluster.startNode(victim)
            let back = try await cluster.waitForStatus("the restarted \(victim) is a member again") { $0.role(of: victim) != nil }
            #expect(back.role(of: victim) == .tail, "\(victim) came back as \(String(describing: back.role(of: victim))), not as tail")
            try await load.waitForProgress("writes went on with \(victim) back")
        }
    }
}
