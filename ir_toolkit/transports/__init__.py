"""Transports: how irkit reaches a host (ssh, winrm, ansible, redfish). They know nothing of playbooks."""
