"""MSP -> tenants -> hosts: the inventory model and its loader."""

from ir_toolkit.inventory.loader import load_inventory, resolve_inventory_path
from ir_toolkit.inventory.model import Host, Inventory, Tenant

__all__ = ["Host", "Inventory", "Tenant", "load_inventory", "resolve_inventory_path"]
