//! The capture meter's per-packet path allocates nothing (checked with a counting allocator,
//! over every kind of packet it meets: billed each way, local, unknown clients, new flows up
//! to the limit and past it).
#![allow(clippy::unwrap_used)]
// The counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to the system's.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use edgeshare_gateway::capture::meter::{Meter, MeterConfig};
use edgeshare_gateway::capture::parse::parse;
use edgeshare_gateway::net::{Client, Mac, Millis};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const GATEWAY: Mac = Mac([2, 0, 0, 0, 0, 1]);

fn frame(src_mac: Mac, dst_mac: Mac, src: [u8; 4], dst: [u8; 4], ports: (u16, u16)) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac.0);
    frame.extend_from_slice(&src_mac.0);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0u8; 40];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&1500u16.to_be_bytes());
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    ip[20..22].copy_from_slice(&ports.0.to_be_bytes());
    ip[22..24].copy_from_slice(&ports.1.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame
}

#[test]
fn observing_packets_allocates_nothing() {
    let clients: Vec<Client> = (2..=101u8)
        .map(|n| Client {
            mac: Mac([2, 0, 0, 0, 1, n]),
            ip: IpAddr::from([10, 0, 0, n]),
        })
        .collect();
    let max_flows = 2_000;
    let mut meter = Meter::new(MeterConfig {
        gateway_mac: GATEWAY,
        local: vec![IpAddr::from([10, 0, 0, 1])],
        max_flows,
        flow_idle_ms: 60_000,
        max_clients: clients.len(),
    });
    meter.set_clients(&clients);
    // Every kind of frame, built before counting starts: 3,000 flows (past the limit), both
    // directions, plus local and unknown traffic.
    let mut frames = Vec::new();
    for i in 0..3_000u32 {
        let c = &clients[(i % 100) as usize];
        let IpAddr::V4(ip) = c.ip else { unreachable!() };
        let port = 10_000 + (i / 100) as u16;
        frames.push(frame(
            c.mac,
            GATEWAY,
            ip.octets(),
            [192, 0, 2, 7],
            (port, 443),
        ));
        frames.push(frame(
            GATEWAY,
            c.mac,
            [192, 0, 2, 7],
            ip.octets(),
            (443, port),
        ));
        frames.push(frame(
            c.mac,
            GATEWAY,
            ip.octets(),
            [10, 0, 0, 1],
            (port, 53),
        ));
    }
    frames.push(frame(
        Mac([2, 9, 9, 9, 9, 9]),
        GATEWAY,
        [10, 0, 9, 9],
        [192, 0, 2, 7],
        (1, 2),
    ));
    let packets: Vec<_> = frames.iter().map(|f| parse(f).unwrap()).collect();

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for round in 0..5u64 {
        for packet in &packets {
            meter.observe(packet, Millis(1_000 + round));
        }
    }
    let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;

    let batch = meter.take(Millis(2_000));
    assert_eq!(batch.flows.len(), max_flows, "the flow table filled up");
    assert!(batch.untracked_packets > 0, "and flows past it were met");
    let billed: u64 = batch
        .clients
        .iter()
        .map(|(_, t)| t.up_bytes + t.down_bytes)
        .sum();
    assert_eq!(billed, 5 * 6_000 * 1_500, "every forwarded packet billed");
    assert_eq!(allocated, 0, "allocations on the per-packet path");
}
